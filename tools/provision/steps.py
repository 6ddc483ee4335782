"""The provisioning steps: each reads its record by key, then creates or updates it.

A step changes only what differs from the design, so a second run writes nothing; a run
that stopped half-way is resumed by running it again (ids are fixed, reads come first).
"""

from __future__ import annotations

import base64
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from tools.provision.design import (
    CXP_ROLE,
    PLUGIN_ASSEMBLY,
    PLUGIN_TYPE,
    POST_OPERATION,
    RELATIONSHIP_CASCADE,
    SYNC_AND_ASYNC,
    SYNCHRONOUS,
    Design,
    ExtendedTable,
    fixed_id,
)
from tools.provision.webapi import API, Conflict, Json, ProvisionError, WebApi

MAX_ASSEMBLY_BYTES = 16 * 1024 * 1024
"""Dataverse's limit for a plugin assembly."""
GLOBAL = "Global"
"""PrivilegeDepth for organization-wide Read."""
_UPDATE = {"If-Match": "*"}
"""Update only: never let a PATCH create a record by accident."""

# Solution component types (solutioncomponent.componenttype) of the classic components;
# tables that became solution-aware later (custom API, channel definition) use their
# ObjectTypeCode, read from the environment.
ENTITY, RELATIONSHIP, PLUGIN_TYPE_COMPONENT, PLUGIN_ASSEMBLY_COMPONENT, STEP = 1, 10, 90, 91, 92


@dataclass(frozen=True)
class Target:
    """What differs per deployment: the Function App, its identity and the plugin build."""

    function_url: str
    function_key: str
    plugin_dll: bytes
    app_client_id: str | None
    app_user_role: str


@dataclass(frozen=True)
class Component:
    """A record the solution must hold."""

    object_id: str
    component_type: int | str
    """A number, or the logical name of a table whose ObjectTypeCode is the type."""
    what: str


def odata(value: str) -> str:
    """A string literal for $filter."""
    return "'" + value.replace("'", "''") + "'"


def placeholder(what: str) -> str:
    """An id that does not exist yet (dry runs): shown as such in the plan."""
    return f"<id of {what}>"


@dataclass
class Provisioner:
    """Runs the steps in order against one environment."""

    api: WebApi
    design: Design
    target: Target
    say: Callable[[str], None] = print
    components: list[Component] = field(default_factory=list)

    def run(self) -> None:
        """Ensure every record; stops at the first error (what is done stays)."""
        d = self.design
        publisher = self.publisher()
        solution = self.solution(publisher)
        business_unit = self.root_business_unit()
        forms: dict[str, str] = {}
        for table in d.tables:
            forms[table.logical_name] = self.table(table)
            self.relationship(table)
        cxp_role = self.role(CXP_ROLE, business_unit)
        for table in d.tables:
            self.read_privilege(table, cxp_role, business_unit)
        assembly = self.plugin_assembly()
        plugin_type = self.plugin_type(assembly)
        message = self.custom_api()
        self.step(plugin_type, message)
        definition = self.channel_definition(
            forms[d.instance_table.logical_name], forms[d.account_table.logical_name]
        )
        self.message_part(definition)
        self.solution_components(solution)
        self.application_user(business_unit)

    # --- publisher, solution ---------------------------------------------------------

    def publisher(self) -> str:
        """The publisher whose prefix names every table and the custom API."""
        d = self.design
        rows = self.api.rows(
            "publishers",
            f"uniquename eq {odata(d.publisher)}",
            "publisherid,uniquename,customizationprefix",
        )
        if rows:
            found = rows[0]
            if found["customizationprefix"] != d.prefix:
                raise Conflict(
                    f"publisher {d.publisher} exists with prefix {found['customizationprefix']!r}, "
                    f"not {d.prefix!r}: pass --prefix {found['customizationprefix']} or another "
                    "--publisher"
                )
            self._same(f"publisher {d.publisher}")
            return str(found["publisherid"])
        body = d.publisher_body()
        self._missing(f"publisher {d.publisher}")
        self.api.write("POST", "publishers", body)
        return str(body["publisherid"])

    def solution(self, publisher: str) -> str:
        """The unmanaged solution holding every component."""
        d = self.design
        rows = self.api.rows(
            "solutions",
            f"uniquename eq {odata(d.solution)}",
            "solutionid,uniquename,ismanaged,_publisherid_value",
        )
        if rows:
            found = rows[0]
            if found.get("ismanaged"):
                raise Conflict(f"solution {d.solution} is managed: pass another --solution")
            if str(found["_publisherid_value"]) != publisher:
                raise Conflict(f"solution {d.solution} belongs to another publisher")
            self._same(f"solution {d.solution}")
            return str(found["solutionid"])
        body = d.solution_body(publisher)
        self._missing(f"solution {d.solution}")
        self.api.write("POST", "solutions", body)
        return str(body["solutionid"])

    def root_business_unit(self) -> str:
        """The root business unit: the app user and the roles used are the ones in it."""
        rows = self.api.rows(
            "businessunits", "_parentbusinessunitid_value eq null", "businessunitid,name"
        )
        if not rows:
            raise ProvisionError("no root business unit visible: is this a Dataverse URL?")
        return str(rows[0]["businessunitid"])

    # --- extended configuration tables ---------------------------------------------------

    def table(self, table: ExtendedTable) -> str:
        """An extended configuration table; returns the id of its main form."""
        name = table.logical_name
        meta = self._table_metadata(name)
        if meta is None:
            self._missing(f"table {name}")
            self.api.write(
                "POST", "EntityDefinitions", table.table_body(), solution=self.design.solution
            )
            meta = self._table_metadata(name) if not self.api.dry_run else None
        else:
            self._same(f"table {name}")
        if meta is None:
            return placeholder(f"the main form of {name}")
        self.components.append(Component(str(meta["MetadataId"]), ENTITY, f"table {name}"))
        forms = self.api.rows(
            "systemforms", f"objecttypecode eq {odata(name)} and type eq 2", "formid,name"
        )
        if not forms:
            raise ProvisionError(
                f"table {name} has no main form: open it in the maker portal, add one"
            )
        return str(forms[0]["formid"]).lower()

    def _table_metadata(self, name: str) -> Json | None:
        return self.api.get(
            f"EntityDefinitions(LogicalName={odata(name)})",
            {"$select": "MetadataId,LogicalName,ObjectTypeCode"},
        )

    def relationship(self, table: ExtendedTable) -> None:
        """The 1:N from the table to the base table's polymorphic msdyn_extendedentityId."""
        name = table.relationship
        path = f"RelationshipDefinitions(SchemaName={odata(name)})"
        found = self.api.get(path)
        if found is None:
            self._missing(f"relationship {name}")
            self.api.write(
                "POST",
                "RelationshipDefinitions",
                table.relationship_body(),
                solution=self.design.solution,
            )
            found = self.api.get(path) if not self.api.dry_run else None
            if found is not None:
                self.components.append(Component(str(found["MetadataId"]), RELATIONSHIP, name))
            return
        ends = (found.get("ReferencedEntity"), found.get("ReferencingEntity"))
        if ends != (table.logical_name, table.base_table) or (
            str(found.get("ReferencingAttribute", "")).lower() != "msdyn_extendedentityid"
        ):
            raise Conflict(
                f"relationship {name} exists between {ends[0]} and {ends[1]} on "
                f"{found.get('ReferencingAttribute')}: delete it, then rerun"
            )
        self.components.append(Component(str(found["MetadataId"]), RELATIONSHIP, name))
        cascade = found.get("CascadeConfiguration") or {}
        wrong = {k: v for k, v in RELATIONSHIP_CASCADE.items() if cascade.get(k) != v}
        if not wrong:
            self._same(f"relationship {name}")
            return
        self._differs(f"relationship {name}", sorted(wrong))
        body = {**found, "CascadeConfiguration": {**cascade, **RELATIONSHIP_CASCADE}}
        self.api.write(
            "PUT",
            f"RelationshipDefinitions({found['MetadataId']})",
            body,
            headers={"MSCRM.MergeLabels": "true"},
        )

    # --- roles and privileges ---------------------------------------------------------

    def role(self, name: str, business_unit: str) -> str:
        """A role of the root business unit, by name (roles are copied per business unit)."""
        rows = self.api.rows(
            "roles",
            f"name eq {odata(name)} and _businessunitid_value eq {business_unit}",
            "roleid,name",
        )
        if not rows:
            raise ProvisionError(
                f"the security role {name!r} does not exist in the root business unit: "
                "install Customer Insights - Journeys (or Sales' custom channels) first"
            )
        return str(rows[0]["roleid"])

    def read_privilege(self, table: ExtendedTable, role: str, business_unit: str) -> None:
        """Organization-wide Read on the table for the CIJ service role (CIJ docs)."""
        what = f"Read on {table.logical_name} for {CXP_ROLE!r}"
        privilege_name = f"prvRead{table.logical_name}"
        rows = self.api.rows("privileges", f"name eq {odata(privilege_name)}", "privilegeid,name")
        if not rows:
            if self.api.dry_run:  # the table does not exist yet
                self._missing(what)
                self._add_privilege(role, placeholder(privilege_name), business_unit)
                return
            raise ProvisionError(f"privilege {privilege_name} not found although the table exists")
        privilege = str(rows[0]["privilegeid"])
        held = self.api.get(f"RetrieveRolePrivilegesRole(RoleId={role})") or {}
        for granted in held.get("RolePrivileges", []):
            if str(granted.get("PrivilegeId")) == privilege and str(granted.get("Depth")) in (
                GLOBAL,
                "3",
            ):
                self._same(what)
                return
        self._missing(what)
        self._add_privilege(role, privilege, business_unit)

    def _add_privilege(self, role: str, privilege: str, business_unit: str) -> None:
        body = {
            "Privileges": [
                {"PrivilegeId": privilege, "Depth": GLOBAL, "BusinessUnitId": business_unit}
            ]
        }
        self.api.write("POST", f"roles({role})/Microsoft.Dynamics.CRM.AddPrivilegesRole", body)

    # --- plugin ---------------------------------------------------------------------------

    def plugin_assembly(self) -> str:
        """The plugin DLL, uploaded again only when its bytes changed."""
        dll = self.target.plugin_dll
        content = base64.b64encode(dll).decode("ascii")
        rows = self.api.rows(
            "pluginassemblies",
            f"name eq {odata(PLUGIN_ASSEMBLY)}",
            "pluginassemblyid,name,content,isolationmode,sourcetype",
        )
        what = f"plugin assembly {PLUGIN_ASSEMBLY}"
        if not rows:
            body = {
                "pluginassemblyid": fixed_id(self.design.solution, "pluginassembly"),
                "name": PLUGIN_ASSEMBLY,
                "content": content,
                "isolationmode": 2,  # sandbox
                "sourcetype": 0,  # database
            }
            self._missing(what)
            self.api.write("POST", "pluginassemblies", body)
            assembly = str(body["pluginassemblyid"])
        else:
            found = rows[0]
            assembly = str(found["pluginassemblyid"])
            changes: Json = {}
            if found.get("content") != content:
                changes["content"] = content
            if found.get("isolationmode") != 2:
                changes["isolationmode"] = 2
            if changes:
                self._differs(what, sorted(changes))
                self.api.write("PATCH", f"pluginassemblies({assembly})", changes, headers=_UPDATE)
            else:
                self._same(what)
        self.components.append(Component(assembly, PLUGIN_ASSEMBLY_COMPONENT, what))
        return assembly

    def plugin_type(self, assembly: str) -> str:
        """The OutboundForwarder class in the assembly."""
        rows = self.api.rows(
            "plugintypes",
            f"typename eq {odata(PLUGIN_TYPE)}",
            "plugintypeid,typename,_pluginassemblyid_value",
        )
        what = f"plugin type {PLUGIN_TYPE}"
        if rows:
            found = rows[0]
            if str(found["_pluginassemblyid_value"]) != assembly:
                raise Conflict(f"{what} belongs to another assembly: unregister it, then rerun")
            self._same(what)
            plugin_type = str(found["plugintypeid"])
        else:
            plugin_type = fixed_id(self.design.solution, "plugintype", PLUGIN_TYPE)
            self._missing(what)
            self.api.write(
                "POST",
                "plugintypes",
                {
                    "plugintypeid": plugin_type,
                    "typename": PLUGIN_TYPE,
                    "name": PLUGIN_TYPE,
                    "friendlyname": "SMS channel outbound forwarder",
                    "pluginassemblyid@odata.bind": f"/pluginassemblies({assembly})",
                },
            )
        self.components.append(Component(plugin_type, PLUGIN_TYPE_COMPONENT, what))
        return plugin_type

    # --- custom API and its step ------------------------------------------------------------

    def custom_api(self) -> str | None:
        """The outbound custom API (payload -> response); returns its message's id."""
        d = self.design
        name = d.custom_api
        rows = self.api.rows(
            "customapis",
            f"uniquename eq {odata(name)}",
            "customapiid,uniquename,allowedcustomprocessingsteptype,bindingtype,isfunction",
            **{
                "$expand": "CustomAPIRequestParameters($select=uniquename,type),"
                "CustomAPIResponseProperties($select=uniquename,type)"
            },
        )
        what = f"custom API {name}"
        if not rows:
            body = d.custom_api_body()
            self._missing(what)
            self.api.write("POST", "customapis", body, solution=d.solution)
            api_id = str(body["customapiid"])
        else:
            found = rows[0]
            api_id = str(found["customapiid"])
            fixed = {
                "allowedcustomprocessingsteptype": SYNC_AND_ASYNC,
                "bindingtype": 0,
                "isfunction": False,
            }
            wrong = sorted(k for k, v in fixed.items() if found.get(k) != v)
            if wrong:
                raise Conflict(
                    f"{what} exists with "
                    f"{', '.join(f'{k}={found.get(k)!r}' for k in wrong)}, which "
                    "cannot change after creation: delete the custom API (and any step on it) "
                    "in the maker portal, then rerun"
                )
            self._same(what)
            self._custom_api_field(
                api_id,
                found.get("CustomAPIRequestParameters") or [],
                d.parameter_body(),
                "customapirequestparameters",
                "input parameter payload",
            )
            self._custom_api_field(
                api_id,
                found.get("CustomAPIResponseProperties") or [],
                d.property_body(),
                "customapiresponseproperties",
                "response property response",
            )
            # A new one goes into the solution with the header; an existing one may not be in.
            self.components.append(Component(api_id, "customapi", what))
        messages = self.api.rows("sdkmessages", f"name eq {odata(name)}", "sdkmessageid,name")
        if messages:
            return str(messages[0]["sdkmessageid"])
        if self.api.dry_run:
            return None
        raise ProvisionError(f"Dataverse made no message for {what}")

    def _custom_api_field(
        self, api_id: str, present: list[Json], body: Json, entity_set: str, what: str
    ) -> None:
        mine = [item for item in present if item.get("uniquename") == body["uniquename"]]
        if mine and mine[0].get("type") == body["type"]:
            return
        if mine:
            raise Conflict(f"{what} is not a string: delete the custom API, then rerun")
        self._missing(what)
        self.api.write(
            "POST",
            entity_set,
            {**body, "CustomAPIId@odata.bind": f"/customapis({api_id})"},
            solution=self.design.solution,
        )

    def step(self, plugin_type: str, message: str | None) -> None:
        """The PostOperation synchronous step: URL unsecure, function key secure."""
        d, t = self.design, self.target
        what = f"step {d.step_name()}"
        desired: Json = {
            "name": d.step_name(),
            "stage": POST_OPERATION,
            "mode": SYNCHRONOUS,
            "rank": 1,
            "supporteddeployment": 0,  # server only
            "configuration": t.function_url,
        }
        found: Json | None = None
        if message is not None:
            rows = self.api.rows(
                "sdkmessageprocessingsteps",
                f"_eventhandler_value eq {plugin_type} and _sdkmessageid_value eq {message}",
                "sdkmessageprocessingstepid,name,stage,mode,rank,supporteddeployment,"
                "configuration,_sdkmessageprocessingstepsecureconfigid_value",
            )
            found = rows[0] if rows else None
        if found is None:
            secure = self._secure_configuration(None)
            step = fixed_id(d.solution, "sdkmessageprocessingstep", d.custom_api)
            self._missing(what)
            self.api.write(
                "POST",
                "sdkmessageprocessingsteps",
                {
                    "sdkmessageprocessingstepid": step,
                    **desired,
                    "eventhandler_plugintype@odata.bind": f"/plugintypes({plugin_type})",
                    "sdkmessageid@odata.bind": (
                        f"/sdkmessages({message or placeholder(d.custom_api)})"
                    ),
                    "sdkmessageprocessingstepsecureconfigid@odata.bind": (
                        f"/sdkmessageprocessingstepsecureconfigs({secure})"
                    ),
                },
            )
        else:
            step = str(found["sdkmessageprocessingstepid"])
            linked = found.get("_sdkmessageprocessingstepsecureconfigid_value")
            secure = self._secure_configuration(str(linked) if linked else None)
            changes = {k: v for k, v in desired.items() if found.get(k) != v}
            if not linked:
                changes["sdkmessageprocessingstepsecureconfigid@odata.bind"] = (
                    f"/sdkmessageprocessingstepsecureconfigs({secure})"
                )
            if changes:
                self._differs(what, sorted(k.split("@")[0] for k in changes))
                self.api.write(
                    "PATCH", f"sdkmessageprocessingsteps({step})", changes, headers=_UPDATE
                )
            else:
                self._same(what)
        self.components.append(Component(step, STEP, what))

    def _secure_configuration(self, linked: str | None) -> str:
        """The secure configuration record holding the function key; returns its id."""
        record = linked or fixed_id(self.design.solution, "secureconfig", self.design.custom_api)
        path = f"sdkmessageprocessingstepsecureconfigs({record})"
        found = self.api.get(path, {"$select": "secureconfig"})
        what = "the step's secure configuration (function key)"
        if found is None:
            self._missing(what)
            self.api.write(
                "POST",
                "sdkmessageprocessingstepsecureconfigs",
                {
                    "sdkmessageprocessingstepsecureconfigid": record,
                    "secureconfig": self.target.function_key,
                },
            )
        elif found.get("secureconfig") != self.target.function_key:
            self._differs(what, ["secureconfig"])
            self.api.write(
                "PATCH", path, {"secureconfig": self.target.function_key}, headers=_UPDATE
            )
        return record

    # --- channel definition and message part --------------------------------------------

    def channel_definition(self, instance_form: str, account_form: str) -> str:
        """The channel definition, upserted by its fixed id."""
        d = self.design
        record = d.channel_definition_id
        desired = d.channel_definition_body(instance_form, account_form)
        self._upsert(
            "msdyn_channeldefinitions", record, desired, {}, f"channel definition {d.channel_name}"
        )
        self.components.append(Component(record, "msdyn_channeldefinition", "channel definition"))
        return record

    def message_part(self, definition: str) -> None:
        """The ``text`` message part of the channel definition."""
        record = self.design.message_part_id
        self._upsert(
            "msdyn_channelmessageparts",
            record,
            self.design.message_part_body(),
            {
                "msdyn_ChannelDefinitionId": (
                    "_msdyn_channeldefinitionid_value",
                    "msdyn_channeldefinitions",
                    definition,
                )
            },
            "message part text",
        )
        self.components.append(Component(record, "msdyn_channelmessagepart", "message part text"))

    def _upsert(
        self,
        entity_set: str,
        record: str,
        desired: Json,
        lookups: dict[str, tuple[str, str, str]],
        what: str,
    ) -> None:
        select = ",".join([*desired, *(value for value, _, _ in lookups.values())])
        found = self.api.get(f"{entity_set}({record})", {"$select": select})
        binds = {
            f"{nav}@odata.bind": f"/{target_set}({target})"
            for nav, (_, target_set, target) in lookups.items()
        }
        if found is None:
            self._missing(what)
            self.api.write("PATCH", f"{entity_set}({record})", {**desired, **binds})  # upsert
            return
        changes: Json = {k: v for k, v in desired.items() if not _same_value(found.get(k), v)}
        for nav, (value, target_set, target) in lookups.items():
            if str(found.get(value) or "").lower() != target.lower():
                changes[f"{nav}@odata.bind"] = f"/{target_set}({target})"
        if not changes:
            self._same(what)
            return
        self._differs(what, sorted(k.split("@")[0] for k in changes))
        self.api.write("PATCH", f"{entity_set}({record})", changes, headers=_UPDATE)

    # --- solution membership ----------------------------------------------------------------

    def solution_components(self, solution: str) -> None:
        """Every record above in the solution (AddSolutionComponent for what is not)."""
        held: set[str] = set()
        if not solution.startswith("<"):
            rows = self.api.rows(
                "solutioncomponents", f"_solutionid_value eq {solution}", "objectid,componenttype"
            )
            held = {str(row["objectid"]).lower() for row in rows}
        missing = [c for c in self.components if c.object_id.lower() not in held]
        if not missing:
            self._same(f"solution {self.design.solution}: all {len(self.components)} components")
            return
        codes: dict[str, int] = {}
        for component in missing:
            kind = component.component_type
            if isinstance(kind, str):
                if kind not in codes:
                    codes[kind] = self._object_type_code(kind)
                kind = codes[kind]
            self._missing(f"{component.what} in solution {self.design.solution}")
            self.api.write(
                "POST",
                "AddSolutionComponent",
                {
                    "ComponentId": component.object_id,
                    "ComponentType": kind,
                    "SolutionUniqueName": self.design.solution,
                    "AddRequiredComponents": False,
                    "DoNotIncludeSubcomponents": False,
                },
            )

    def _object_type_code(self, table: str) -> int:
        meta = self._table_metadata(table)
        if meta is None:
            raise ProvisionError(
                f"table {table} not found: is the Customer Insights - Journeys or Sales base "
                "solution for custom channels installed?"
            )
        return int(meta["ObjectTypeCode"])

    # --- the Function App's identity ------------------------------------------------------

    def application_user(self, business_unit: str) -> None:
        """The Function App's managed identity as an application user with its role."""
        t = self.target
        if not t.app_client_id:
            self.say("skipped: application user (no --app-client-id / CHANNEL_APP_CLIENT_ID)")
            return
        what = f"application user {t.app_client_id}"
        rows = self.api.rows(
            "systemusers",
            f"applicationid eq {t.app_client_id}",
            "systemuserid,applicationid,_businessunitid_value",
        )
        role_bu = business_unit
        if rows:
            self._same(what)
            user: str | None = str(rows[0]["systemuserid"])
            role_bu = str(rows[0]["_businessunitid_value"])
        else:
            self._missing(what)
            self.api.write(
                "POST",
                "systemusers",
                {
                    "applicationid": t.app_client_id,
                    "businessunitid@odata.bind": f"/businessunits({business_unit})",
                },
            )
            user = None
            if not self.api.dry_run:
                created = self.api.rows(
                    "systemusers", f"applicationid eq {t.app_client_id}", "systemuserid"
                )
                if not created:
                    raise ProvisionError(f"{what} was created but cannot be read back")
                user = str(created[0]["systemuserid"])
        role = self.role(t.app_user_role, role_bu)
        assignment = f"role {t.app_user_role!r} of {what}"
        if user is not None:
            assigned = self.api.rows(
                f"systemusers({user})/systemuserroles_association", f"roleid eq {role}", "roleid"
            )
            if assigned:
                self._same(assignment)
                return
        self._missing(assignment)
        self.api.write(
            "POST",
            f"systemusers({user or placeholder(what)})/systemuserroles_association/$ref",
            {"@odata.id": f"{self.api.url}{API}roles({role})"},
        )

    # --- reporting ------------------------------------------------------------------------------

    def _same(self, what: str) -> None:
        self.say(f"ok: {what}")

    def _missing(self, what: str) -> None:
        self.say(f"missing: {what}")

    def _differs(self, what: str, fields: list[str]) -> None:
        self.say(f"differs: {what} ({', '.join(fields)})")


def _same_value(found: Any, desired: Any) -> bool:
    if isinstance(desired, str) and isinstance(found, str):
        # Dataverse may return GUID strings (form ids) in another case.
        return found == desired or (len(desired) == 36 and found.lower() == desired.lower())
    return bool(found == desired)
