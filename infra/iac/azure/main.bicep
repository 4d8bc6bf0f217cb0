// lakesight on Azure: storage (landing, labeling, exports, lake, dead-letter containers), Event Grid
// system topics delivering to the lakesight handler's /api/events webhook, and an Azure ML
// workspace with a GPU cluster for retraining.
//
//   az deployment group create -g <rg> -f infra/iac/azure/main.bicep \
//     -p @infra/iac/azure/main.parameters.json -p handlerBaseUrl=https://... eventKey="$LAKESIGHT_EVENT_KEY"

targetScope = 'resourceGroup'

@description('Region for every resource.')
param location string = resourceGroup().location

@description('Prefix of resource names.')
@minLength(3)
@maxLength(11)
param prefix string = 'lakesight'

@description('Lake storage account name (globally unique, 3-24 lowercase letters and digits).')
@maxLength(24)
param storageAccountName string = toLower('${prefix}${uniqueString(resourceGroup().id)}')

// Container names: the defaults of LAKESIGHT_IMAGES_CONTAINER, _LABELING_CONTAINER, _EXPORTS_CONTAINER.
param imagesContainer string = 'images'
param labelingContainer string = 'labeling'
param exportsContainer string = 'labeling-exports'

@description('Container holding the Delta tables (LAKESIGHT_LAKE_ROOT=abfss://<lakeContainer>@<account>.dfs.core.windows.net/tables).')
param lakeContainer string = 'lake'

@description('Container where Event Grid writes events it could not deliver.')
param deadLetterContainer string = 'deadletter'

@description('Base URL of the lakesight handler (Azure Functions app or any HTTPS host serving /api/events).')
param handlerBaseUrl string

@secure()
@description('Shared key the handler checks (LAKESIGHT_EVENT_KEY). Use a URL-safe random string.')
param eventKey string

@description('False creates the topics without subscriptions: Event Grid validates a webhook when the subscription is created, so the handler must be up first.')
param deploySubscriptions bool = true

@minValue(1)
@maxValue(30)
param maxDeliveryAttempts int = 30

@minValue(1)
@maxValue(1440)
param eventTimeToLiveInMinutes int = 1440

param workspaceName string = '${prefix}-ml'
param gpuClusterName string = 'gpu-cluster'
param gpuVmSize string = 'Standard_NC4as_T4_v3'

@minValue(1)
param gpuMaxNodes int = 1

@description('Experiment of the retraining command job (infra/iac/azureml/retrain-job.yml); only its RunCompleted and RunStatusChanged events are sent.')
param retrainExperimentName string = 'lakesight-retraining'

param tags object = {
  project: 'lakesight'
}

var suffix = uniqueString(resourceGroup().id)

// Upload APIs that mean "a complete blob now exists". Chunked and ADLS uploads raise other
// BlobCreated events (empty placeholders, partial flushes) that the handler would only discard.
var blobCreatedApis = [
  'PutBlob'
  'PutBlockList'
  'CopyBlob'
  'FlushWithClose'
]

// The handler acts on new images and on labeling exports; blobs in the labeling container are
// written by lakesight itself, so they are not subscribed.
var blobSubscriptions = [
  for container in [imagesContainer, exportsContainer]: {
    name: 'blob-created-${container}'
    includedEventTypes: [
      'Microsoft.Storage.BlobCreated'
    ]
    subjectBeginsWith: '/blobServices/default/containers/${container}/'
    advancedFilters: [
      {
        operatorType: 'StringIn'
        key: 'data.api'
        values: blobCreatedApis
      }
      {
        operatorType: 'NumberGreaterThan'
        key: 'data.contentLength'
        value: 0
      }
    ]
  }
]

// Filters are ANDed, so run completions (filtered by experiment) and drift get one subscription each.
var mlSubscriptions = [
  {
    name: 'retrain-run-completed'
    includedEventTypes: [
      'Microsoft.MachineLearningServices.RunCompleted'
      'Microsoft.MachineLearningServices.RunStatusChanged'
    ]
    subjectBeginsWith: ''
    advancedFilters: [
      {
        operatorType: 'StringIn'
        key: 'data.experimentName'
        values: [
          retrainExperimentName
        ]
      }
    ]
  }
  {
    name: 'dataset-drift-detected'
    includedEventTypes: [
      'Microsoft.MachineLearningServices.DatasetDriftDetected'
    ]
    subjectBeginsWith: ''
    advancedFilters: []
  }
]

module storage 'modules/storage.bicep' = {
  name: 'lakesight-storage'
  params: {
    name: storageAccountName
    location: location
    containers: [
      imagesContainer
      labelingContainer
      exportsContainer
      lakeContainer
      deadLetterContainer
    ]
    tags: tags
  }
}

module blobEvents 'modules/event-webhooks.bicep' = {
  name: 'lakesight-blob-events'
  params: {
    topicName: '${prefix}-storage-events'
    location: location
    sourceId: storage.outputs.id
    topicType: 'Microsoft.Storage.StorageAccounts'
    handlerBaseUrl: handlerBaseUrl
    eventKey: eventKey
    subscriptions: blobSubscriptions
    deploySubscriptions: deploySubscriptions
    deadLetterStorageId: storage.outputs.id
    deadLetterContainer: deadLetterContainer
    maxDeliveryAttempts: maxDeliveryAttempts
    eventTimeToLiveInMinutes: eventTimeToLiveInMinutes
    tags: tags
  }
}

module ml 'modules/ml.bicep' = {
  name: 'lakesight-ml'
  params: {
    workspaceName: workspaceName
    location: location
    keyVaultName: 'kv-${prefix}-${take(suffix, 8)}'
    storageAccountName: take('${prefix}ml${suffix}', 24)
    logAnalyticsName: '${prefix}-logs'
    appInsightsName: '${prefix}-insights'
    gpuClusterName: gpuClusterName
    gpuVmSize: gpuVmSize
    gpuMaxNodes: gpuMaxNodes
    lakeStorageAccountName: storage.outputs.name
    labelingContainer: labelingContainer
    tags: tags
  }
}

module mlEvents 'modules/event-webhooks.bicep' = {
  name: 'lakesight-ml-events'
  params: {
    topicName: '${prefix}-ml-events'
    location: location
    sourceId: ml.outputs.workspaceId
    topicType: 'Microsoft.MachineLearningServices.Workspaces'
    handlerBaseUrl: handlerBaseUrl
    eventKey: eventKey
    subscriptions: mlSubscriptions
    deploySubscriptions: deploySubscriptions
    deadLetterStorageId: storage.outputs.id
    deadLetterContainer: deadLetterContainer
    maxDeliveryAttempts: maxDeliveryAttempts
    eventTimeToLiveInMinutes: eventTimeToLiveInMinutes
    tags: tags
  }
}

output storageAccountName string = storage.outputs.name
output topicName string = blobEvents.outputs.name
output mlTopicName string = mlEvents.outputs.name
output workspaceName string = ml.outputs.workspaceName
output gpuClusterName string = ml.outputs.gpuClusterName
output labelingDatastoreName string = ml.outputs.labelingDatastoreName
output lakeRoot string = 'abfss://${lakeContainer}@${storage.outputs.name}.dfs.core.windows.net/tables'
