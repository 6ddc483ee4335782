"""What the channel needs in Dataverse: names, fixed ids and record bodies, no I/O.

Sources: Microsoft Learn, "Add a custom SMS channel" (Sales) and the CIJ custom-channel
pages (channel definition, message parts, extended configuration entities), "Create a
custom API with code" and "Custom API" (known issue: a main-operation plugin gets no
configuration, so the plugin runs in a PostOperation step of a custom API that allows
custom processing steps, ``allowedcustomprocessingsteptype`` 2).
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from typing import Any

_NAMESPACE = uuid.UUID("0b6c1f9e-5d0a-4a5e-9c3b-7d2e8f1a4c60")
"""Fixed namespace of the uuid5 ids: the same names give the same ids on every run."""

PLUGIN_ASSEMBLY = "SmsChannel.Plugin"
"""The AssemblyName in plugin/SmsChannel.Plugin.csproj."""
PLUGIN_TYPE = "SmsChannel.Plugin.OutboundForwarder"
CXP_ROLE = "Cxp Channel Definitions Services User"
"""The CIJ service role that must read the extended configuration tables (CIJ docs)."""
EXTENDED_LOOKUP = "msdyn_extendedentityId"
"""The polymorphic lookup on msdyn_channelinstance and msdyn_channelinstanceaccount."""
STRING = 10
"""customapirequestparameter/customapiresponseproperty type: String."""
SYNC_AND_ASYNC = 2
"""customapi.allowedcustomprocessingsteptype: steps may be registered on the message."""
POST_OPERATION = 40
SYNCHRONOUS = 0
PLAIN_TEXT = 192350000
"""msdyn_channelmessagepart.msdyn_type: plain text, the only part an SMS channel may have."""


def fixed_id(*names: str) -> str:
    """A lowercase uuid5 of ``names`` (the CIJ docs ask for lowercase GUIDs)."""
    return str(uuid.uuid5(_NAMESPACE, "/".join(names)))


def label(text: str) -> dict[str, Any]:
    """A metadata Label in English (1033)."""
    return {
        "@odata.type": "Microsoft.Dynamics.CRM.Label",
        "LocalizedLabels": [
            {
                "@odata.type": "Microsoft.Dynamics.CRM.LocalizedLabel",
                "Label": text,
                "LanguageCode": 1033,
            }
        ],
    }


@dataclass(frozen=True)
class ExtendedTable:
    """One extended configuration table and its relationship to a base channel table."""

    logical_name: str
    display_name: str
    base_table: str
    """msdyn_channelinstance or msdyn_channelinstanceaccount."""
    base_schema: str
    """The base table's schema name in the relationship's name (CIJ XML)."""

    @property
    def relationship(self) -> str:
        """The relationship's schema name, as the CIJ docs' XML gives it."""
        return f"{self.base_schema}_extendedentityid_{self.logical_name}"

    @property
    def lookup_navigation(self) -> str:
        """The base table's navigation property for the lookup to this table (CIJ XML)."""
        return f"msdyn_extendedentityid_{self.logical_name}"

    def table_body(self) -> dict[str, Any]:
        """POST EntityDefinitions: a user-owned table with its primary name column."""
        prefix = self.logical_name.split("_", 1)[0]
        return {
            "@odata.type": "Microsoft.Dynamics.CRM.EntityMetadata",
            "SchemaName": self.logical_name,
            "DisplayName": label(self.display_name),
            "DisplayCollectionName": label(self.display_name + "s"),
            "Description": label(
                f"Extended configuration of {self.base_table} for the SMS channel"
            ),
            "OwnershipType": "UserOwned",
            "IsActivity": False,
            "HasActivities": False,
            "HasNotes": False,
            "Attributes": [
                {
                    "@odata.type": "Microsoft.Dynamics.CRM.StringAttributeMetadata",
                    "SchemaName": f"{prefix}_name",
                    "AttributeType": "String",
                    "AttributeTypeName": {"Value": "StringType"},
                    "IsPrimaryName": True,
                    "MaxLength": 100,
                    "FormatName": {"Value": "Text"},
                    "RequiredLevel": {"Value": "None", "CanBeChanged": True},
                    "DisplayName": label("Name"),
                    "Description": label("Name"),
                }
            ],
        }

    def relationship_body(self) -> dict[str, Any]:
        """POST RelationshipDefinitions: a 1:N on the existing polymorphic lookup."""
        return {
            "@odata.type": "Microsoft.Dynamics.CRM.OneToManyRelationshipMetadata",
            "SchemaName": self.relationship,
            "ReferencedEntity": self.logical_name,
            "ReferencedAttribute": f"{self.logical_name}id",
            "ReferencingEntity": self.base_table,
            "ReferencedEntityNavigationPropertyName": self.relationship,
            "ReferencingEntityNavigationPropertyName": self.lookup_navigation,
            "IsCustomizable": {"Value": False, "CanBeChanged": False},
            "IsValidForAdvancedFind": True,
            "IsHierarchical": False,
            "CascadeConfiguration": RELATIONSHIP_CASCADE,
            "AssociatedMenuConfiguration": {
                "Behavior": "UseCollectionName",
                "Group": "Details",
                "Order": 10000,
            },
            # Adding a table to an existing multi-table lookup: the Lookup's SchemaName is
            # the lookup's own (Power Apps docs, "Multi-table lookup columns", Web API).
            "Lookup": {
                "@odata.type": "Microsoft.Dynamics.CRM.LookupAttributeMetadata",
                "AttributeType": "Lookup",
                "AttributeTypeName": {"Value": "LookupType"},
                "SchemaName": EXTENDED_LOOKUP,
                "DisplayName": label("Extended entity"),
            },
        }


RELATIONSHIP_CASCADE = {
    "Assign": "NoCascade",
    "Delete": "RemoveLink",
    "Merge": "NoCascade",
    "Reparent": "NoCascade",
    "Share": "NoCascade",
    "Unshare": "NoCascade",
    "RollupView": "NoCascade",
}
"""The cascades of the CIJ docs' relationship XML (Delete RemoveLink, all others none)."""


@dataclass(frozen=True)
class Design:
    """Every name and id the channel's records use, from the few choices of the admin."""

    prefix: str
    publisher: str
    solution: str
    channel_name: str
    option_value_prefix: int

    @property
    def instance_table(self) -> ExtendedTable:
        """The channel instance's (one sender's) extended configuration table."""
        return ExtendedTable(
            f"{self.prefix}_smsinstance",
            "SMS channel sender",
            "msdyn_channelinstance",
            "msdyn_ChannelInstance",
        )

    @property
    def account_table(self) -> ExtendedTable:
        """The channel instance account's extended configuration table (SMS only)."""
        return ExtendedTable(
            f"{self.prefix}_smsaccount",
            "SMS channel account",
            "msdyn_channelinstanceaccount",
            "msdyn_ChannelInstanceAccount",
        )

    @property
    def tables(self) -> tuple[ExtendedTable, ExtendedTable]:
        """Both extended configuration tables."""
        return (self.instance_table, self.account_table)

    @property
    def custom_api(self) -> str:
        """The outbound custom API's unique name (also its message's name)."""
        return f"{self.prefix}_SmsOutbound"

    @property
    def channel_definition_id(self) -> str:
        """The channel definition's fixed id."""
        return fixed_id(self.solution, "msdyn_channeldefinition")

    @property
    def message_part_id(self) -> str:
        """The ``text`` message part's fixed id."""
        return fixed_id(self.solution, "msdyn_channelmessagepart", "text")

    def publisher_body(self) -> dict[str, Any]:
        """The publisher, created once (its prefixes never change afterwards)."""
        return {
            "publisherid": fixed_id(self.publisher, "publisher"),
            "uniquename": self.publisher,
            "friendlyname": "SMS channel",
            "customizationprefix": self.prefix,
            "customizationoptionvalueprefix": self.option_value_prefix,
        }

    def solution_body(self, publisher_id: str) -> dict[str, Any]:
        """The unmanaged solution that holds every component."""
        return {
            "solutionid": fixed_id(self.solution, "solution"),
            "uniquename": self.solution,
            "friendlyname": "SMS channel",
            "version": "1.0.0.0",
            "publisherid@odata.bind": f"/publishers({publisher_id})",
        }

    def custom_api_body(self) -> dict[str, Any]:
        """The outbound custom API with its parameter and property (one deep insert)."""
        api = self.custom_api
        return {
            "customapiid": fixed_id(self.solution, "customapi", api),
            "uniquename": api,
            "name": api,
            "displayname": "SMS channel outbound",
            "description": "Sends an SMS through the channel's Function App (plugin step).",
            "bindingtype": 0,
            "isfunction": False,
            "isprivate": False,
            "allowedcustomprocessingsteptype": SYNC_AND_ASYNC,
            "iscustomizable": {"Value": False},
            "CustomAPIRequestParameters": [self.parameter_body()],
            "CustomAPIResponseProperties": [self.property_body()],
        }

    def parameter_body(self) -> dict[str, Any]:
        """The ``payload`` input: the outbound contract as a JSON string."""
        return {
            "uniquename": "payload",
            "name": f"{self.custom_api}.payload",
            "displayname": "Payload",
            "description": "The outbound contract (JSON)",
            "type": STRING,
            "isoptional": False,
            "iscustomizable": {"Value": False},
        }

    def property_body(self) -> dict[str, Any]:
        """The ``response`` output: the channel's answer as a JSON string."""
        return {
            "uniquename": "response",
            "name": f"{self.custom_api}.response",
            "displayname": "Response",
            "description": "The channel's answer (JSON)",
            "type": STRING,
            "iscustomizable": {"Value": False},
        }

    def step_name(self) -> str:
        """The plugin step's name."""
        return f"{PLUGIN_TYPE}: {self.custom_api} (PostOperation)"

    def channel_definition_body(self, instance_form: str, account_form: str) -> dict[str, Any]:
        """The channel definition (upserted by its fixed id)."""
        return {
            "msdyn_name": self.channel_name,
            "msdyn_displayname": self.channel_name,
            "msdyn_description": "SMS through the channel's Azure Function App",
            "msdyn_channeltype": "SMS",
            "msdyn_outboundendpointurltemplate": f"/{self.custom_api}",
            "msdyn_hasinbound": True,
            "msdyn_hasdeliveryreceipt": True,
            "msdyn_supportsaccount": True,
            "msdyn_supportsattachment": False,
            "msdyn_supportsbinary": False,
            "msdyn_specialconsentrequired": False,
            "msdyn_channeldefinitionexternalentity": self.instance_table.logical_name,
            "msdyn_channeldefinitionexternalformid": instance_form,
            "msdyn_channeldefinitionaccountexternalentity": self.account_table.logical_name,
            "msdyn_channeldefinitionaccountexternalformid": account_form,
        }

    def message_part_body(self) -> dict[str, Any]:
        """The one message part an SMS channel has: ``text``, plain text."""
        return {
            "msdyn_name": "text",
            "msdyn_displayname": "Text",
            "msdyn_description": "Text",
            "msdyn_type": PLAIN_TEXT,
            "msdyn_isrequired": True,
            "msdyn_maxlength": 1000,
        }
