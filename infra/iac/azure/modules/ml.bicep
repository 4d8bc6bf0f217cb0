// Azure ML workspace for GPU retraining: the workspace with its required key vault, Application
// Insights (on Log Analytics) and storage account, and a GPU compute cluster that scales to zero.

param workspaceName string
param location string

@description('Globally unique names for the workspace dependencies.')
param keyVaultName string
param storageAccountName string
param logAnalyticsName string
param appInsightsName string

param gpuClusterName string
param gpuVmSize string

@minValue(1)
param gpuMaxNodes int

@description('Lake storage account the GPU cluster reads the Delta table from.')
param lakeStorageAccountName string

@description('Container of the lake storage account holding the copies handed to labelers.')
param labelingContainer string

@description('The Azure ML datastore on that container: exports name images as azureml://…/datastores/<name>/paths/… (LAKESIGHT_LABELING_DATASTORE).')
param labelingDatastoreName string = 'lakesight_labeling'

param tags object = {}

// Storage Blob Data Reader: training only reads the images table.
var blobDataReaderRoleId = '2a2b9908-6ea1-4ae2-8e65-a410df84e7d1'

resource mlStorage 'Microsoft.Storage/storageAccounts@2023-05-01' = {
  name: storageAccountName
  location: location
  tags: tags
  sku: {
    name: 'Standard_LRS'
  }
  kind: 'StorageV2'
  properties: {
    // An Azure ML workspace's default storage must not use the hierarchical namespace.
    isHnsEnabled: false
    minimumTlsVersion: 'TLS1_2'
    supportsHttpsTrafficOnly: true
    allowBlobPublicAccess: false
  }
}

resource keyVault 'Microsoft.KeyVault/vaults@2023-07-01' = {
  name: keyVaultName
  location: location
  tags: tags
  properties: {
    tenantId: subscription().tenantId
    sku: {
      family: 'A'
      name: 'standard'
    }
    enableRbacAuthorization: true
    enableSoftDelete: true
  }
}

resource logs 'Microsoft.OperationalInsights/workspaces@2023-09-01' = {
  name: logAnalyticsName
  location: location
  tags: tags
  properties: {
    sku: {
      name: 'PerGB2018'
    }
    retentionInDays: 30
  }
}

resource appInsights 'Microsoft.Insights/components@2020-02-02' = {
  name: appInsightsName
  location: location
  tags: tags
  kind: 'web'
  properties: {
    Application_Type: 'web'
    WorkspaceResourceId: logs.id
  }
}

resource workspace 'Microsoft.MachineLearningServices/workspaces@2024-04-01' = {
  name: workspaceName
  location: location
  tags: tags
  identity: {
    type: 'SystemAssigned'
  }
  sku: {
    name: 'Basic'
    tier: 'Basic'
  }
  properties: {
    friendlyName: workspaceName
    storageAccount: mlStorage.id
    keyVault: keyVault.id
    applicationInsights: appInsights.id
  }
}

resource gpuCluster 'Microsoft.MachineLearningServices/workspaces/computes@2024-04-01' = {
  parent: workspace
  name: gpuClusterName
  location: location
  identity: {
    type: 'SystemAssigned'
  }
  properties: {
    computeType: 'AmlCompute'
    properties: {
      vmSize: gpuVmSize
      vmPriority: 'Dedicated'
      osType: 'Linux'
      remoteLoginPortPublicAccess: 'Disabled'
      // Zero idle nodes: a GPU costs money only while a retraining runs.
      scaleSettings: {
        minNodeCount: 0
        maxNodeCount: gpuMaxNodes
        nodeIdleTimeBeforeScaleDown: 'PT10M'
      }
    }
  }
}

resource lakeStorage 'Microsoft.Storage/storageAccounts@2023-05-01' existing = {
  name: lakeStorageAccountName
}

resource clusterReadsLake 'Microsoft.Authorization/roleAssignments@2022-04-01' = {
  name: guid(lakeStorage.id, gpuCluster.id, blobDataReaderRoleId)
  scope: lakeStorage
  properties: {
    roleDefinitionId: subscriptionResourceId('Microsoft.Authorization/roleDefinitions', blobDataReaderRoleId)
    principalId: gpuCluster.identity.principalId
    principalType: 'ServicePrincipal'
  }
}

// The labeling container as a datastore, so an Azure ML data labeling project can take its images
// from the hand-off's copies, and its exports name them by datastore path (docs/LABELING.md).
resource labelingDatastore 'Microsoft.MachineLearningServices/workspaces/datastores@2024-04-01' = {
  parent: workspace
  name: labelingDatastoreName
  properties: {
    datastoreType: 'AzureBlob'
    accountName: lakeStorageAccountName
    containerName: labelingContainer
    endpoint: environment().suffixes.storage
    protocol: 'https'
    // Identity-based access: no account key is stored in the workspace.
    credentials: {
      credentialsType: 'None'
    }
    serviceDataAccessAuthIdentity: 'WorkspaceSystemAssignedIdentity'
    description: 'Copies of the images lakesight hands to labelers'
  }
}

// The workspace's identity reads the copies for the labeling project (reader: labels come back as exports).
resource workspaceReadsLabeling 'Microsoft.Authorization/roleAssignments@2022-04-01' = {
  name: guid(lakeStorage.id, workspace.id, blobDataReaderRoleId)
  scope: lakeStorage
  properties: {
    roleDefinitionId: subscriptionResourceId('Microsoft.Authorization/roleDefinitions', blobDataReaderRoleId)
    principalId: workspace.identity.principalId
    principalType: 'ServicePrincipal'
  }
}

output workspaceName string = workspace.name
output workspaceId string = workspace.id
output gpuClusterName string = gpuCluster.name
output labelingDatastoreName string = labelingDatastore.name
