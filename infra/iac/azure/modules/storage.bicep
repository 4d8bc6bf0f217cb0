// Storage account for lakesight: the landing, labeling and export containers, the Delta lake
// container (abfss:// needs the hierarchical namespace) and the Event Grid dead-letter container.

@description('Storage account name (3-24 lowercase letters and digits, globally unique).')
@minLength(3)
@maxLength(24)
param name string

param location string

@description('Containers to create; the first three match the LAKESIGHT_*_CONTAINER settings.')
param containers array

param tags object = {}

resource account 'Microsoft.Storage/storageAccounts@2023-05-01' = {
  name: name
  location: location
  tags: tags
  sku: {
    name: 'Standard_LRS'
  }
  kind: 'StorageV2'
  properties: {
    // ADLS Gen2: the Delta tables are read and written through abfss://.
    isHnsEnabled: true
    accessTier: 'Hot'
    minimumTlsVersion: 'TLS1_2'
    supportsHttpsTrafficOnly: true
    allowBlobPublicAccess: false
  }
}

resource blobService 'Microsoft.Storage/storageAccounts/blobServices@2023-05-01' = {
  parent: account
  name: 'default'
}

resource containerResources 'Microsoft.Storage/storageAccounts/blobServices/containers@2023-05-01' = [
  for container in containers: {
    parent: blobService
    name: container
    properties: {
      publicAccess: 'None'
    }
  }
]

output id string = account.id
output name string = account.name
output dfsEndpoint string = account.properties.primaryEndpoints.dfs
