// Key Vault: the only place provider secrets are stored. The app reads them through
// Key Vault references with its identity (Key Vault Secrets User).
param name string
param location string
param tags object
param principalId string

@secure()
param twilioAuthToken string
@secure()
param acsAccessKey string
@secure()
param webhookSecret string
@secure()
param vonagePrivateKey string
@secure()
param vonageSignatureSecret string
@secure()
param telnyxApiKey string
@secure()
param sinchApiToken string
@secure()
param sinchWebhookSecret string
@secure()
param plivoAuthToken string

var secretsUserRoleId = '4633458b-17de-408a-b874-0445c86b69e6'

resource vault 'Microsoft.KeyVault/vaults@2023-07-01' = {
  // checkov:skip=CKV_AZURE_109: Key Vault references from Flex Consumption without a virtual network need the public endpoint (RBAC only)
  // checkov:skip=CKV_AZURE_189: same reason as CKV_AZURE_109
  // checkov:skip=CKV_AZURE_110: purge protection would stop `azd down --purge` from freeing the vault's name for 7 days
  // checkov:skip=CKV_AZURE_42: soft delete is on; this check also requires purge protection (see CKV_AZURE_110)
  name: name
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
    softDeleteRetentionInDays: 7
    publicNetworkAccess: 'Enabled'
    networkAcls: {
      defaultAction: 'Allow'
      bypass: 'AzureServices'
    }
  }
}

resource twilioAuthTokenSecret 'Microsoft.KeyVault/vaults/secrets@2023-07-01' = if (!empty(twilioAuthToken)) {
  // checkov:skip=CKV_AZURE_41: a provider's secret has no fixed lifetime; an expiry would silently stop the channel
  // checkov:skip=CKV_AZURE_114: contentType is set; checkov does not read the properties of a conditional resource
  parent: vault
  name: 'twilio-auth-token'
  properties: {
    value: twilioAuthToken
    contentType: 'text/plain'
  }
}

resource acsAccessKeySecret 'Microsoft.KeyVault/vaults/secrets@2023-07-01' = if (!empty(acsAccessKey)) {
  // checkov:skip=CKV_AZURE_41: a provider's secret has no fixed lifetime; an expiry would silently stop the channel
  // checkov:skip=CKV_AZURE_114: contentType is set; checkov does not read the properties of a conditional resource
  parent: vault
  name: 'acs-access-key'
  properties: {
    value: acsAccessKey
    contentType: 'text/plain'
  }
}

resource webhookSecretSecret 'Microsoft.KeyVault/vaults/secrets@2023-07-01' = if (!empty(webhookSecret)) {
  // checkov:skip=CKV_AZURE_41: a provider's secret has no fixed lifetime; an expiry would silently stop the channel
  // checkov:skip=CKV_AZURE_114: contentType is set; checkov does not read the properties of a conditional resource
  parent: vault
  name: 'channel-webhook-secret'
  properties: {
    value: webhookSecret
    contentType: 'text/plain'
  }
}

resource vonagePrivateKeySecret 'Microsoft.KeyVault/vaults/secrets@2023-07-01' = if (!empty(vonagePrivateKey)) {
  // checkov:skip=CKV_AZURE_41: a provider's secret has no fixed lifetime; an expiry would silently stop the channel
  // checkov:skip=CKV_AZURE_114: contentType is set; checkov does not read the properties of a conditional resource
  parent: vault
  name: 'vonage-private-key'
  properties: {
    value: vonagePrivateKey
    contentType: 'text/plain'
  }
}

resource vonageSignatureSecretSecret 'Microsoft.KeyVault/vaults/secrets@2023-07-01' = if (!empty(vonageSignatureSecret)) {
  // checkov:skip=CKV_AZURE_41: a provider's secret has no fixed lifetime; an expiry would silently stop the channel
  // checkov:skip=CKV_AZURE_114: contentType is set; checkov does not read the properties of a conditional resource
  parent: vault
  name: 'vonage-signature-secret'
  properties: {
    value: vonageSignatureSecret
    contentType: 'text/plain'
  }
}

resource telnyxApiKeySecret 'Microsoft.KeyVault/vaults/secrets@2023-07-01' = if (!empty(telnyxApiKey)) {
  // checkov:skip=CKV_AZURE_41: a provider's secret has no fixed lifetime; an expiry would silently stop the channel
  // checkov:skip=CKV_AZURE_114: contentType is set; checkov does not read the properties of a conditional resource
  parent: vault
  name: 'telnyx-api-key'
  properties: {
    value: telnyxApiKey
    contentType: 'text/plain'
  }
}

resource sinchApiTokenSecret 'Microsoft.KeyVault/vaults/secrets@2023-07-01' = if (!empty(sinchApiToken)) {
  // checkov:skip=CKV_AZURE_41: a provider's secret has no fixed lifetime; an expiry would silently stop the channel
  // checkov:skip=CKV_AZURE_114: contentType is set; checkov does not read the properties of a conditional resource
  parent: vault
  name: 'sinch-api-token'
  properties: {
    value: sinchApiToken
    contentType: 'text/plain'
  }
}

resource sinchWebhookSecretSecret 'Microsoft.KeyVault/vaults/secrets@2023-07-01' = if (!empty(sinchWebhookSecret)) {
  // checkov:skip=CKV_AZURE_41: a provider's secret has no fixed lifetime; an expiry would silently stop the channel
  // checkov:skip=CKV_AZURE_114: contentType is set; checkov does not read the properties of a conditional resource
  parent: vault
  name: 'sinch-webhook-secret'
  properties: {
    value: sinchWebhookSecret
    contentType: 'text/plain'
  }
}

resource plivoAuthTokenSecret 'Microsoft.KeyVault/vaults/secrets@2023-07-01' = if (!empty(plivoAuthToken)) {
  // checkov:skip=CKV_AZURE_41: a provider's secret has no fixed lifetime; an expiry would silently stop the channel
  // checkov:skip=CKV_AZURE_114: contentType is set; checkov does not read the properties of a conditional resource
  parent: vault
  name: 'plivo-auth-token'
  properties: {
    value: plivoAuthToken
    contentType: 'text/plain'
  }
}

// Key Vault Secrets User: read secret values, nothing else.
resource secretsUser 'Microsoft.Authorization/roleAssignments@2022-04-01' = {
  name: guid(vault.id, principalId, secretsUserRoleId)
  scope: vault
  properties: {
    roleDefinitionId: subscriptionResourceId('Microsoft.Authorization/roleDefinitions', secretsUserRoleId)
    principalId: principalId
    principalType: 'ServicePrincipal'
  }
}

output name string = vault.name
