// The user-assigned identity the app uses for everything: storage, telemetry, Key Vault,
// ACS and Dataverse (its client id becomes the Dataverse application user).
param name string
param location string
param tags object

resource identity 'Microsoft.ManagedIdentity/userAssignedIdentities@2023-01-31' = {
  name: name
  location: location
  tags: tags
}

output resourceId string = identity.id
output clientId string = identity.properties.clientId
output principalId string = identity.properties.principalId
