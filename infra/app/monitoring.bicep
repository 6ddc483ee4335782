// Log Analytics and Application Insights, both with local (key) auth off: the app's
// identity publishes telemetry with Entra ID.
param logAnalyticsName string
param applicationInsightsName string
param location string
param tags object
param principalId string
param monitoringRoleId string

resource logAnalytics 'Microsoft.OperationalInsights/workspaces@2023-09-01' = {
  name: logAnalyticsName
  location: location
  tags: tags
  properties: {
    sku: {
      name: 'PerGB2018'
    }
    retentionInDays: 30
    features: {
      disableLocalAuth: true
    }
  }
}

resource applicationInsights 'Microsoft.Insights/components@2020-02-02' = {
  name: applicationInsightsName
  location: location
  tags: tags
  kind: 'web'
  properties: {
    Application_Type: 'web'
    WorkspaceResourceId: logAnalytics.id
    DisableLocalAuth: true
  }
}

// Monitoring Metrics Publisher: telemetry is accepted only from Entra-authenticated callers.
resource publisher 'Microsoft.Authorization/roleAssignments@2022-04-01' = {
  name: guid(applicationInsights.id, principalId, monitoringRoleId)
  scope: applicationInsights
  properties: {
    roleDefinitionId: subscriptionResourceId('Microsoft.Authorization/roleDefinitions', monitoringRoleId)
    principalId: principalId
    principalType: 'ServicePrincipal'
  }
}

output connectionString string = applicationInsights.properties.ConnectionString
output applicationInsightsId string = applicationInsights.id
