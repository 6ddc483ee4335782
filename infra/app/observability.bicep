// What an operator watches: the workbook (infra/workbook.json) over Application Insights,
// and the alert rules (infra/alerts.json), mailed to an optional address.
param location string
param tags object
param applicationInsightsId string
param resourceToken string

@description('Optional: where alerts are mailed; without it the rules still fire in the portal.')
param alertEmail string = ''

@description('Dead outbox items above which the outbox-dead rule fires.')
param deadItems int = 0

@description('Percent of NotSent answers (of at least 10 messages in 15 minutes) above which the not-sent-rate rule fires.')
param notSentPercent int = 20

@description('Percent of provider attempts answered 5xx (of at least 10 in 15 minutes) above which the provider-5xx-rate rule fires.')
param provider5xxPercent int = 10

@description('Refused webhook calls in 15 minutes from which the webhook-refusals rule fires.')
param webhookRefusals int = 3

var rules = loadJsonContent('../alerts.json').rules
var thresholds = {
  'outbox-dead': deadItems
  'not-sent-rate': notSentPercent
  'provider-5xx-rate': provider5xxPercent
  'webhook-refusals': webhookRefusals
}

resource workbook 'Microsoft.Insights/workbooks@2023-06-01' = {
  name: guid(applicationInsightsId, 'sms-channel-workbook')
  location: location
  tags: tags
  kind: 'shared'
  properties: {
    displayName: 'SMS channel (${resourceToken})'
    category: 'workbook'
    sourceId: applicationInsightsId
    serializedData: loadTextContent('../workbook.json')
  }
}

resource operators 'Microsoft.Insights/actionGroups@2023-01-01' = if (!empty(alertEmail)) {
  name: 'ag-sms-${resourceToken}'
  location: 'global'
  tags: tags
  properties: {
    groupShortName: 'sms-channel'
    enabled: true
    emailReceivers: [
      {
        name: 'operator'
        emailAddress: alertEmail
        useCommonAlertSchema: true
      }
    ]
  }
}

resource alerts 'Microsoft.Insights/scheduledQueryRules@2023-12-01' = [for rule in rules: {
  name: 'alert-sms-${rule.name}-${resourceToken}'
  location: location
  tags: tags
  kind: 'LogAlert'
  properties: {
    displayName: 'SMS channel: ${rule.name}'
    description: replace(rule.description, '{threshold}', string(thresholds[rule.name]))
    severity: rule.severity
    enabled: true
    scopes: [
      applicationInsightsId
    ]
    evaluationFrequency: 'PT5M'
    windowSize: 'PT15M'
    criteria: {
      allOf: [
        {
          query: replace(rule.query, '{threshold}', string(thresholds[rule.name]))
          timeAggregation: 'Count'
          operator: 'GreaterThan'
          threshold: 0
          failingPeriods: {
            numberOfEvaluationPeriods: 1
            minFailingPeriodsToAlert: 1
          }
        }
      ]
    }
    autoMitigate: true
    actions: {
      actionGroups: empty(alertEmail) ? [] : [
        operators.id
      ]
    }
  }
}]

output workbookId string = workbook.id
