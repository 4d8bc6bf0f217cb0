// An Event Grid system topic on one Azure resource and webhook subscriptions to the lakesight
// handler. Every subscription shares the delivery settings: Event Grid schema, the shared key as
// the `code` query parameter, a bounded retry policy and dead-lettering to a blob container.

param topicName string
param location string

@description('Resource id of the event source (storage account, Azure ML workspace).')
param sourceId string

@description('System topic type, e.g. Microsoft.Storage.StorageAccounts.')
param topicType string

@description('Base URL of the handler, e.g. https://lakesight-handler.azurewebsites.net (no trailing path).')
param handlerBaseUrl string

@secure()
@description('The handler shared key (LAKESIGHT_EVENT_KEY).')
param eventKey string

@description('Subscriptions: objects with name, includedEventTypes, subjectBeginsWith (or empty) and advancedFilters.')
param subscriptions array

@description('False deploys the topic only: subscriptions need the handler running to pass validation.')
param deploySubscriptions bool = true

param deadLetterStorageId string
param deadLetterContainer string

@minValue(1)
@maxValue(30)
param maxDeliveryAttempts int

@minValue(1)
@maxValue(1440)
param eventTimeToLiveInMinutes int

@minValue(1)
@maxValue(5000)
param maxEventsPerBatch int = 1

param tags object = {}

var baseUrl = endsWith(handlerBaseUrl, '/') ? substring(handlerBaseUrl, 0, length(handlerBaseUrl) - 1) : handlerBaseUrl

resource topic 'Microsoft.EventGrid/systemTopics@2022-06-15' = {
  name: topicName
  location: location
  tags: tags
  properties: {
    source: sourceId
    topicType: topicType
  }
}

resource webhooks 'Microsoft.EventGrid/systemTopics/eventSubscriptions@2022-06-15' = [
  for sub in subscriptions: if (deploySubscriptions) {
    parent: topic
    name: sub.name
    properties: {
      destination: {
        endpointType: 'WebHook'
        properties: {
          // Event Grid never returns the full endpoint URL, so the key in its query string stays secret.
          // The handler checks `code` itself (its Azure Functions wrapper is anonymous at that level).
          endpointUrl: '${baseUrl}/api/events?code=${uriComponent(eventKey)}'
          maxEventsPerBatch: maxEventsPerBatch
          preferredBatchSizeInKilobytes: 64
        }
      }
      eventDeliverySchema: 'EventGridSchema'
      filter: {
        includedEventTypes: sub.includedEventTypes
        subjectBeginsWith: empty(sub.subjectBeginsWith) ? null : sub.subjectBeginsWith
        advancedFilters: sub.advancedFilters
        enableAdvancedFilteringOnArrays: true
      }
      // The handler answers 400/401/413 for events it will never accept; those go straight to the
      // dead-letter container, everything else is retried until these limits.
      retryPolicy: {
        maxDeliveryAttempts: maxDeliveryAttempts
        eventTimeToLiveInMinutes: eventTimeToLiveInMinutes
      }
      deadLetterDestination: {
        endpointType: 'StorageBlob'
        properties: {
          resourceId: deadLetterStorageId
          blobContainerName: deadLetterContainer
        }
      }
    }
  }
]

output name string = topic.name
output id string = topic.id
