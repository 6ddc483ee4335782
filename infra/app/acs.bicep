// On the Communication Services resource (in its own resource group): the role that lets
// the app's identity send SMS, and the two Event Grid subscriptions to the app's webhooks.
param name string
param principalId string
@description('Grant the send role (only needed when the app signs in with its identity, not a key).')
param grantSendRole bool
@description('Create the Event Grid subscriptions: only once the app is deployed, for the handshake.')
param createEventSubscriptions bool
param functionAppHost string
@secure()
param webhookSecret string

// Communication and Email Service Owner: may send SMS with an Entra ID token.
var sendRoleId = '09976791-48a7-449e-bb21-39d1a415f350'

resource communication 'Microsoft.Communication/communicationServices@2023-04-01' existing = {
  name: name
}

resource sender 'Microsoft.Authorization/roleAssignments@2022-04-01' = if (grantSendRole) {
  name: guid(communication.id, principalId, sendRoleId)
  scope: communication
  properties: {
    roleDefinitionId: subscriptionResourceId('Microsoft.Authorization/roleDefinitions', sendRoleId)
    principalId: principalId
    principalType: 'ServicePrincipal'
  }
}

// One event per request (bodies over 64 KiB are refused), retried for 24 hours.
resource deliveryReports 'Microsoft.EventGrid/eventSubscriptions@2022-06-15' = if (createEventSubscriptions) {
  name: 'sms-delivery-reports'
  scope: communication
  properties: {
    destination: {
      endpointType: 'WebHook'
      properties: {
        endpointUrl: 'https://${functionAppHost}/api/delivery-report/acs?secret=${webhookSecret}'
        maxEventsPerBatch: 1
        preferredBatchSizeInKilobytes: 64
      }
    }
    filter: {
      includedEventTypes: [
        'Microsoft.Communication.SMSDeliveryReportReceived'
      ]
    }
    eventDeliverySchema: 'EventGridSchema'
    retryPolicy: {
      maxDeliveryAttempts: 30
      eventTimeToLiveInMinutes: 1440
    }
  }
}

resource replies 'Microsoft.EventGrid/eventSubscriptions@2022-06-15' = if (createEventSubscriptions) {
  name: 'sms-replies'
  scope: communication
  properties: {
    destination: {
      endpointType: 'WebHook'
      properties: {
        endpointUrl: 'https://${functionAppHost}/api/inbound/acs?secret=${webhookSecret}'
        maxEventsPerBatch: 1
        preferredBatchSizeInKilobytes: 64
      }
    }
    filter: {
      includedEventTypes: [
        'Microsoft.Communication.SMSReceived'
      ]
    }
    eventDeliverySchema: 'EventGridSchema'
    retryPolicy: {
      maxDeliveryAttempts: 30
      eventTimeToLiveInMinutes: 1440
    }
  }
}
