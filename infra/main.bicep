// The SMS channel in Azure: everything `azd up` creates, in one resource group.
targetScope = 'subscription'

@minLength(1)
@maxLength(64)
@description('Name of the azd environment; it names the resource group and seeds the resource names.')
param environmentName string

@minLength(1)
@description('Region of every resource (one where Flex Consumption is available).')
@metadata({ azd: { type: 'location' } })
param location string

@description('The SMS provider: twilio, acs, vonage, telnyx, sinch, plivo or loopback (sends nothing; for a first try).')
@allowed(['twilio', 'acs', 'vonage', 'telnyx', 'sinch', 'plivo', 'loopback'])
param channelProvider string

@description('The Dataverse environment URL, e.g. https://contoso.crm.dynamics.com')
param dataverseUrl string

@description('Optional: the Dataverse organization id (read once from WhoAmI otherwise).')
param dataverseOrganizationId string = ''

@description('Optional: the channel definition GUID used for replies when it cannot be learned.')
param channelDefinitionId string = ''

@description('Optional: the public base URL when a custom domain or proxy fronts the app (default: its Azure host name).')
param publicUrl string = ''

@description('Region for numbers written without a country code.')
param defaultRegion string = 'US'

@description('Optional: CHANNEL_ROUTES, a JSON object mapping channel definition ids or senders to provider ids when several providers send (channelProvider stays the default).')
param channelRoutes string = ''

@description('Twilio: the account SID (AC...).')
param twilioAccountSid string = ''

@description('Twilio: optional Messaging Service SID (MG...).')
param twilioMessagingServiceSid string = ''

@secure()
@description('Twilio: the auth token; stored in Key Vault only.')
param twilioAuthToken string = ''

@description('ACS: the endpoint, https://<resource>.communication.azure.com')
param acsEndpoint string = ''

@description('ACS: the resource id of the Communication Services resource (for its role and Event Grid).')
param acsResourceId string = ''

@secure()
@description('ACS: optional access key; without it the managed identity signs in. Key Vault only.')
param acsAccessKey string = ''

@secure()
@description('Shared secret of the ACS Event Grid webhooks; stored in Key Vault only.')
param webhookSecret string = ''

@description('Vonage: the application id (a GUID) of the Vonage application that sends.')
param vonageApplicationId string = ''

@secure()
@description('Vonage: the application\'s PEM private key; stored in Key Vault only.')
param vonagePrivateKey string = ''

@secure()
@description('Vonage: the account\'s signature secret (signed webhooks); stored in Key Vault only.')
param vonageSignatureSecret string = ''

@secure()
@description('Telnyx: the API key; stored in Key Vault only.')
param telnyxApiKey string = ''

@description('Telnyx: the account\'s public key (base64 Ed25519; not a secret) that signs webhooks.')
param telnyxPublicKey string = ''

@description('Telnyx: optional messaging profile id.')
param telnyxMessagingProfileId string = ''

@description('Sinch: the service plan id of the SMS REST API.')
param sinchServicePlanId string = ''

@secure()
@description('Sinch: the service plan\'s API token; stored in Key Vault only.')
param sinchApiToken string = ''

@description('Sinch: the API base URL of the service plan\'s region (empty: https://us.sms.api.sinch.com).')
param sinchBaseUrl string = ''

@secure()
@description('Sinch: optional webhook signing secret (signing enabled by Sinch); stored in Key Vault only.')
param sinchWebhookSecret string = ''

@description('Plivo: the auth id (MA... or a subaccount\'s SA...).')
param plivoAuthId string = ''

@secure()
@description('Plivo: the auth token (sends and signs webhooks); stored in Key Vault only.')
param plivoAuthToken string = ''

@description('Optional: an email address the alert rules (dead outbox items, NotSent or provider 5xx rate, refused webhooks) write to.')
param alertEmail string = ''

@description('ACS: create the two Event Grid subscriptions (set after the first deploy: the handshake needs the app).')
param acsEventSubscriptions bool = false

var resourceToken = toLower(uniqueString(subscription().id, environmentName, location))
var tags = { 'azd-env-name': environmentName }
var resourceGroupName = 'rg-${environmentName}'
var functionAppName = 'func-sms-${resourceToken}'
var keyVaultName = 'kv-${resourceToken}'
var ledgerTableName = 'smschannel'
var deploymentContainerName = 'app-package-${take(functionAppName, 32)}'
var monitoringRoleId = '3913510d-42f4-4e42-8a64-420c390055eb'

// A placeholder id in this subscription when no ACS resource is named, so that the
// scope of the (then skipped) ACS module is still a well-formed expression.
var acsId = empty(acsResourceId) ? '${subscription().id}/resourceGroups/${resourceGroupName}/providers/Microsoft.Communication/communicationServices/none' : acsResourceId
var acsIdParts = split(acsId, '/')

// The channel's settings (read by channel/config.py); the platform's are added in app/api.bicep.
// An empty value is the same as unset for the app. Secrets are Key Vault references
// (resolved with the app's identity), never values.
var channelSettings = {
  CHANNEL_PROVIDER: channelProvider
  CHANNEL_ROUTES: channelRoutes
  DATAVERSE_URL: dataverseUrl
  DATAVERSE_ORGANIZATION_ID: dataverseOrganizationId
  CHANNEL_DEFINITION_ID: channelDefinitionId
  CHANNEL_DEFAULT_REGION: defaultRegion
  CHANNEL_PUBLIC_URL: publicUrl
  CHANNEL_STORAGE_URL: storage.outputs.tableEndpoint
  CHANNEL_STORAGE_TABLE: ledgerTableName
  TWILIO_ACCOUNT_SID: twilioAccountSid
  TWILIO_MESSAGING_SERVICE_SID: twilioMessagingServiceSid
  TWILIO_AUTH_TOKEN: empty(twilioAuthToken) ? '' : '@Microsoft.KeyVault(VaultName=${keyVaultName};SecretName=twilio-auth-token)'
  ACS_ENDPOINT: acsEndpoint
  ACS_ACCESS_KEY: empty(acsAccessKey) ? '' : '@Microsoft.KeyVault(VaultName=${keyVaultName};SecretName=acs-access-key)'
  CHANNEL_WEBHOOK_SECRET: empty(webhookSecret) ? '' : '@Microsoft.KeyVault(VaultName=${keyVaultName};SecretName=channel-webhook-secret)'
  VONAGE_APPLICATION_ID: vonageApplicationId
  VONAGE_PRIVATE_KEY: empty(vonagePrivateKey) ? '' : '@Microsoft.KeyVault(VaultName=${keyVaultName};SecretName=vonage-private-key)'
  VONAGE_SIGNATURE_SECRET: empty(vonageSignatureSecret) ? '' : '@Microsoft.KeyVault(VaultName=${keyVaultName};SecretName=vonage-signature-secret)'
  TELNYX_API_KEY: empty(telnyxApiKey) ? '' : '@Microsoft.KeyVault(VaultName=${keyVaultName};SecretName=telnyx-api-key)'
  TELNYX_PUBLIC_KEY: telnyxPublicKey
  TELNYX_MESSAGING_PROFILE_ID: telnyxMessagingProfileId
  SINCH_SERVICE_PLAN_ID: sinchServicePlanId
  SINCH_API_TOKEN: empty(sinchApiToken) ? '' : '@Microsoft.KeyVault(VaultName=${keyVaultName};SecretName=sinch-api-token)'
  SINCH_BASE_URL: sinchBaseUrl
  SINCH_WEBHOOK_SECRET: empty(sinchWebhookSecret) ? '' : '@Microsoft.KeyVault(VaultName=${keyVaultName};SecretName=sinch-webhook-secret)'
  PLIVO_AUTH_ID: plivoAuthId
  PLIVO_AUTH_TOKEN: empty(plivoAuthToken) ? '' : '@Microsoft.KeyVault(VaultName=${keyVaultName};SecretName=plivo-auth-token)'
}

resource rg 'Microsoft.Resources/resourceGroups@2024-03-01' = {
  name: resourceGroupName
  location: location
  tags: tags
}

module identity 'app/identity.bicep' = {
  name: 'identity'
  scope: rg
  params: {
    name: 'id-sms-${resourceToken}'
    location: location
    tags: tags
  }
}

module monitoring 'app/monitoring.bicep' = {
  name: 'monitoring'
  scope: rg
  params: {
    logAnalyticsName: 'log-${resourceToken}'
    applicationInsightsName: 'appi-${resourceToken}'
    location: location
    tags: tags
    principalId: identity.outputs.principalId
    monitoringRoleId: monitoringRoleId
  }
}

// The operator's workbook and alert rules over Application Insights.
module observability 'app/observability.bicep' = {
  name: 'observability'
  scope: rg
  params: {
    location: location
    tags: tags
    applicationInsightsId: monitoring.outputs.applicationInsightsId
    resourceToken: resourceToken
    alertEmail: alertEmail
  }
}

module storage 'app/storage.bicep' = {
  name: 'storage'
  scope: rg
  params: {
    name: 'st${resourceToken}'
    location: location
    tags: tags
    deploymentContainerName: deploymentContainerName
    ledgerTableName: ledgerTableName
    principalId: identity.outputs.principalId
  }
}

module keyVault 'app/keyvault.bicep' = {
  name: 'keyvault'
  scope: rg
  params: {
    name: keyVaultName
    location: location
    tags: tags
    principalId: identity.outputs.principalId
    twilioAuthToken: twilioAuthToken
    acsAccessKey: acsAccessKey
    webhookSecret: webhookSecret
    vonagePrivateKey: vonagePrivateKey
    vonageSignatureSecret: vonageSignatureSecret
    telnyxApiKey: telnyxApiKey
    sinchApiToken: sinchApiToken
    sinchWebhookSecret: sinchWebhookSecret
    plivoAuthToken: plivoAuthToken
  }
}

module api 'app/api.bicep' = {
  name: 'api'
  scope: rg
  params: {
    name: functionAppName
    planName: 'plan-${resourceToken}'
    location: location
    tags: tags
    identityId: identity.outputs.resourceId
    identityClientId: identity.outputs.clientId
    storageBlobEndpoint: storage.outputs.blobEndpoint
    deploymentContainerName: deploymentContainerName
    applicationInsightsConnectionString: monitoring.outputs.connectionString
    appSettings: channelSettings
  }
  // The settings hold Key Vault references and the ledger's URL: the identity's roles
  // must exist before the app first resolves and uses them.
  dependsOn: [
    keyVault
    storage
    monitoring
  ]
}

// The ACS resource may live in another resource group: its role and Event Grid
// subscriptions are deployed there.
module acs 'app/acs.bicep' = if ((channelProvider == 'acs') && !empty(acsResourceId)) {
  name: 'acs'
  scope: resourceGroup(acsIdParts[2], acsIdParts[4])
  params: {
    name: acsIdParts[8]
    principalId: identity.outputs.principalId
    grantSendRole: empty(acsAccessKey)
    createEventSubscriptions: acsEventSubscriptions && !empty(webhookSecret)
    functionAppHost: api.outputs.defaultHostName
    webhookSecret: webhookSecret
  }
}

output AZURE_LOCATION string = location
output AZURE_TENANT_ID string = tenant().tenantId
output AZURE_RESOURCE_GROUP string = rg.name
output AZURE_KEY_VAULT_NAME string = keyVaultName
output AZURE_CLIENT_ID string = identity.outputs.clientId
output FUNCTION_APP_NAME string = api.outputs.name
output FUNCTION_APP_URL string = 'https://${api.outputs.defaultHostName}'
output HEALTH_URL string = 'https://${api.outputs.defaultHostName}/api/health'
