"""A fake Dataverse Web API for the provisioning command: records, metadata and actions.

It keeps state like the real service and refuses (400, listed in ``rejected``) calls that
break the documented shapes: unknown entity sets or columns, missing required columns,
binds to records that do not exist, creates of solution-aware metadata and custom APIs
without ``MSCRM.SolutionUniqueName``, relationships on ``msdyn_extendedentityId`` that do
not match the CIJ docs' XML, a PostOperation step on a custom API that allows none, an
update (``If-Match: *``) of a record that does not exist. Every accepted write is listed in
``writes``; ``deny`` makes calls answer 403 naming a privilege, as Dataverse does.
"""

from __future__ import annotations

import itertools
import json
import re
import threading
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any
from urllib.parse import unquote

from pytest_httpserver import HTTPServer
from werkzeug import Request, Response

from tests.fakes import FakeIdentity

API = "/api/data/v9.2/"
ROOT_BU = "4a7c0d1e-0000-4000-8000-000000000001"
CXP_ROLE = "Cxp Channel Definitions Services User"
CXP_ROLE_ID = "4a7c0d1e-0000-4000-8000-0000000000c9"
OTHER_BU = "4a7c0d1e-0000-4000-8000-000000000002"
CIJ_TABLES = {
    "msdyn_channelinstance": "msdyn_ChannelInstance",
    "msdyn_channelinstanceaccount": "msdyn_ChannelInstanceAccount",
}

KEYS = {
    "publishers": "publisherid",
    "solutions": "solutionid",
    "businessunits": "businessunitid",
    "roles": "roleid",
    "privileges": "privilegeid",
    "systemforms": "formid",
    "pluginassemblies": "pluginassemblyid",
    "plugintypes": "plugintypeid",
    "customapis": "customapiid",
    "customapirequestparameters": "customapirequestparameterid",
    "customapiresponseproperties": "customapiresponsepropertyid",
    "sdkmessages": "sdkmessageid",
    "sdkmessageprocessingsteps": "sdkmessageprocessingstepid",
    "sdkmessageprocessingstepsecureconfigs": "sdkmessageprocessingstepsecureconfigid",
    "msdyn_channeldefinitions": "msdyn_channeldefinitionid",
    "msdyn_channelmessageparts": "msdyn_channelmessagepartid",
    "systemusers": "systemuserid",
    "solutioncomponents": "solutioncomponentid",
}
BIND_TARGETS = {
    "publisherid": "publishers",
    "pluginassemblyid": "pluginassemblies",
    "eventhandler_plugintype": "plugintypes",
    "sdkmessageid": "sdkmessages",
    "sdkmessageprocessingstepsecureconfigid": "sdkmessageprocessingstepsecureconfigs",
    "msdyn_ChannelDefinitionId": "msdyn_channeldefinitions",
    "businessunitid": "businessunits",
    "CustomAPIId": "customapis",
}
REQUIRED = {
    "publishers": {
        "uniquename",
        "friendlyname",
        "customizationprefix",
        "customizationoptionvalueprefix",
    },
    "solutions": {"uniquename", "friendlyname", "version", "publisherid@odata.bind"},
    "pluginassemblies": {"name", "content", "isolationmode", "sourcetype"},
    "plugintypes": {"typename", "pluginassemblyid@odata.bind"},
    "customapis": {
        "uniquename",
        "name",
        "displayname",
        "bindingtype",
        "isfunction",
        "allowedcustomprocessingsteptype",
    },
    "customapirequestparameters": {
        "uniquename",
        "name",
        "displayname",
        "type",
        "CustomAPIId@odata.bind",
    },
    "customapiresponseproperties": {
        "uniquename",
        "name",
        "displayname",
        "type",
        "CustomAPIId@odata.bind",
    },
    "sdkmessageprocessingstepsecureconfigs": {"secureconfig"},
    "sdkmessageprocessingsteps": {
        "name",
        "stage",
        "mode",
        "rank",
        "eventhandler_plugintype@odata.bind",
        "sdkmessageid@odata.bind",
    },
    "msdyn_channeldefinitions": {
        "msdyn_name",
        "msdyn_hasinbound",
        "msdyn_hasdeliveryreceipt",
        "msdyn_supportsaccount",
        "msdyn_supportsattachment",
    },
    "msdyn_channelmessageparts": {"msdyn_name", "msdyn_ChannelDefinitionId@odata.bind"},
    "systemusers": {"applicationid", "businessunitid@odata.bind"},
}
OPTIONAL = {
    "publishers": {"publisherid"},
    "solutions": {"solutionid", "description"},
    "pluginassemblies": {"pluginassemblyid", "description"},
    "plugintypes": {"plugintypeid", "name", "friendlyname", "description"},
    "customapis": {
        "customapiid",
        "description",
        "isprivate",
        "iscustomizable",
        "executeprivilegename",
        "CustomAPIRequestParameters",
        "CustomAPIResponseProperties",
    },
    "customapirequestparameters": {
        "description",
        "isoptional",
        "iscustomizable",
        "logicalentityname",
    },
    "customapiresponseproperties": {"description", "iscustomizable", "logicalentityname"},
    "sdkmessageprocessingstepsecureconfigs": {"sdkmessageprocessingstepsecureconfigid"},
    "sdkmessageprocessingsteps": {
        "sdkmessageprocessingstepid",
        "supporteddeployment",
        "configuration",
        "description",
        "sdkmessageprocessingstepsecureconfigid@odata.bind",
    },
    "msdyn_channeldefinitions": {
        "msdyn_displayname",
        "msdyn_description",
        "msdyn_channeltype",
        "msdyn_outboundendpointurltemplate",
        "msdyn_supportsbinary",
        "msdyn_specialconsentrequired",
        "msdyn_channeldefinitionexternalentity",
        "msdyn_channeldefinitionexternalformid",
        "msdyn_channeldefinitionaccountexternalentity",
        "msdyn_channeldefinitionaccountexternalformid",
    },
    "msdyn_channelmessageparts": {
        "msdyn_displayname",
        "msdyn_description",
        "msdyn_type",
        "msdyn_isrequired",
        "msdyn_maxlength",
    },
    "systemusers": set(),
}
DEPTHS = {"Basic", "Local", "Deep", "Global"}


@dataclass
class Denial:
    """Answer 403 to calls whose method and path match, naming ``privilege``."""

    method: str
    path: re.Pattern[str]
    privilege: str


class Rejected(Exception):
    """A call that breaks the documented shape."""


class FakeWebApi:
    """The Web API of one environment with CIJ's base solution installed."""

    def __init__(self, server: HTTPServer, identity: FakeIdentity) -> None:
        self.server = server
        self.identity = identity
        self.url = server.url_for("/").rstrip("/")
        self.rows: dict[str, dict[str, dict[str, Any]]] = {name: {} for name in KEYS}
        self.entities: dict[str, dict[str, Any]] = {}
        self.relationships: dict[str, dict[str, Any]] = {}
        self.role_privileges: dict[str, dict[str, str]] = {}
        self.user_roles: dict[str, set[str]] = {}
        self.writes: list[str] = []
        self.rejected: list[str] = []
        self.denials: list[Denial] = []
        self.custom_api_handler: Callable[[str, dict[str, Any]], dict[str, Any]] | None = None
        self._codes = itertools.count(10_400)
        self._lock = threading.Lock()
        self._seed()
        server.expect_request(re.compile(f"^{re.escape(API)}")).respond_with_handler(self.handle)

    # --- state -----------------------------------------------------------------------

    def _seed(self) -> None:
        self.rows["businessunits"][ROOT_BU] = {
            "businessunitid": ROOT_BU,
            "name": "contoso",
            "_parentbusinessunitid_value": None,
        }
        self.rows["businessunits"][OTHER_BU] = {
            "businessunitid": OTHER_BU,
            "name": "sales",
            "_parentbusinessunitid_value": ROOT_BU,
        }
        for role, name, bu in (
            (CXP_ROLE_ID, CXP_ROLE, ROOT_BU),
            (str(uuid.uuid4()), CXP_ROLE, OTHER_BU),
        ):
            self.rows["roles"][role] = {"roleid": role, "name": name, "_businessunitid_value": bu}
        for table in (
            *CIJ_TABLES,
            "customapi",
            "customapirequestparameter",
            "customapiresponseproperty",
            "msdyn_channeldefinition",
            "msdyn_channelmessagepart",
        ):
            self._add_entity(table)

    def _add_entity(self, name: str) -> dict[str, Any]:
        meta = {
            "MetadataId": str(uuid.uuid4()),
            "LogicalName": name,
            "ObjectTypeCode": next(self._codes),
        }
        self.entities[name] = meta
        for verb in ("Create", "Read", "Write", "Delete", "Append", "AppendTo"):
            privilege = str(uuid.uuid4())
            self.rows["privileges"][privilege] = {
                "privilegeid": privilege,
                "name": f"prv{verb}{name}",
            }
        return meta

    def record(self, entity_set: str, key: str) -> dict[str, Any]:
        """A stored record (tests change it "by hand")."""
        return self.rows[entity_set][key]

    def find(self, entity_set: str, **values: Any) -> list[dict[str, Any]]:
        """Stored records whose columns have ``values``."""
        return [
            row
            for row in self.rows[entity_set].values()
            if all(row.get(k) == v for k, v in values.items())
        ]

    def deny(self, method: str, path: str, privilege: str) -> None:
        """Answer 403 to ``method`` on paths matching the regex ``path``."""
        self.denials.append(Denial(method, re.compile(path), privilege))

    # --- HTTP ------------------------------------------------------------------------------

    def handle(self, request: Request) -> Response:
        path = unquote(request.path[len(API) :])
        with self._lock:
            problems = self._header_problems(request)
            if problems:
                self.rejected.extend(problems)
                return _error(400, "0x80048d19", "; ".join(problems))
            for denial in self.denials:
                if denial.method == request.method and denial.path.search(path):
                    return _error(
                        403,
                        "0x80040220",
                        f"Principal user (Id=..., type=8, roleCount=1) is missing "
                        f"{denial.privilege} privilege (Id={uuid.uuid4()})",
                    )
            try:
                if request.method == "GET":
                    return self._get(path, request)
                body = json.loads(request.data) if request.data else None
                answer = self._write(request, path, body)
            except Rejected as error:
                self.rejected.append(f"{request.method} {path}: {error}")
                return _error(400, "0x80040203", str(error))
            if not self.find("customapis", uniquename=path):  # executing an API writes nothing
                self.writes.append(f"{request.method} {path}")
            return answer

    def _header_problems(self, request: Request) -> list[str]:
        found = []
        token = request.headers.get("Authorization", "").removeprefix("Bearer ")
        if token not in self.identity.issued:
            found.append(f"unknown bearer token {token!r}")
        for name, value in (
            ("Accept", "application/json"),
            ("OData-MaxVersion", "4.0"),
            ("OData-Version", "4.0"),
        ):
            if request.headers.get(name) != value:
                found.append(f"{name}: {request.headers.get(name)!r}")
        if (
            request.method != "GET"
            and request.data
            and (request.headers.get("Content-Type") != "application/json; charset=utf-8")
        ):
            found.append(f"Content-Type: {request.headers.get('Content-Type')!r}")
        return found

    # --- reads ------------------------------------------------------------------------------

    def _get(self, path: str, request: Request) -> Response:  # noqa: PLR0911 - a router
        args = request.args
        if m := re.fullmatch(r"EntityDefinitions\(LogicalName='([^']+)'\)", path):
            meta = self.entities.get(m.group(1))
            return _json(_select(meta, args)) if meta else _error(404, "0x80060888", "no table")
        if m := re.fullmatch(r"RelationshipDefinitions\(SchemaName='([^']+)'\)", path):
            rel = self.relationships.get(m.group(1))
            return _json(rel) if rel else _error(404, "0x80060888", "no relationship")
        if m := re.fullmatch(r"RetrieveRolePrivilegesRole\(RoleId=([0-9a-f-]+)\)", path):
            held = self.role_privileges.get(m.group(1), {})
            return _json(
                {
                    "RolePrivileges": [
                        {
                            "PrivilegeId": p,
                            "Depth": d,
                            "BusinessUnitId": ROOT_BU,
                            "PrivilegeName": self.rows["privileges"][p]["name"],
                        }
                        for p, d in held.items()
                    ]
                }
            )
        if m := re.fullmatch(r"systemusers\(([0-9a-f-]+)\)/systemuserroles_association", path):
            roles = [self.rows["roles"][r] for r in self.user_roles.get(m.group(1), set())]
            return _json({"value": [_select(r, args) for r in _filter(roles, args)]})
        if m := re.fullmatch(r"(\w+)\(([0-9a-f-]{36})\)", path):
            row = self.rows.get(m.group(1), {}).get(m.group(2))
            return _json(_select(row, args)) if row else _error(404, "0x80040217", "not found")
        if path in self.rows:
            found = [
                _select(self._expand(path, r, args), args)
                for r in _filter(list(self.rows[path].values()), args)
            ]
            return _json({"value": found})
        self.rejected.append(f"GET {path}: unknown")
        return _error(404, "0x8006088a", f"Resource not found for the segment '{path}'")

    def _expand(self, entity_set: str, row: dict[str, Any], args: Any) -> dict[str, Any]:
        if entity_set != "customapis" or "$expand" not in args:
            return row
        key = row["customapiid"]
        return {
            **row,
            "CustomAPIRequestParameters": self.find(
                "customapirequestparameters", _customapiid_value=key
            ),
            "CustomAPIResponseProperties": self.find(
                "customapiresponseproperties", _customapiid_value=key
            ),
        }

    # --- writes -----------------------------------------------------------------------------------

    def _write(  # noqa: PLR0911, PLR0912 - a router
        self, request: Request, path: str, body: Any
    ) -> Response:
        solution = request.headers.get("MSCRM.SolutionUniqueName")
        if solution is not None and not self.find("solutions", uniquename=solution):
            raise Rejected(f"solution {solution} does not exist")
        method = request.method
        if method == "POST" and path == "EntityDefinitions":
            return self._create_table(body, solution)
        if method == "POST" and path == "RelationshipDefinitions":
            return self._create_relationship(body, solution)
        if method == "PUT" and (
            m := re.fullmatch(r"RelationshipDefinitions\(([0-9a-f-]+)\)", path)
        ):
            return self._update_relationship(m.group(1), body, request)
        if method == "POST" and (
            m := re.fullmatch(
                r"roles\(([0-9a-f-]+)\)/Microsoft\.Dynamics\.CRM\.AddPrivilegesRole", path
            )
        ):
            return self._add_privileges(m.group(1), body)
        if method == "POST" and path == "AddSolutionComponent":
            return self._add_component(body)
        if method == "POST" and (
            m := re.fullmatch(
                r"systemusers\(([0-9a-f-]+)\)/systemuserroles_association/\$ref", path
            )
        ):
            return self._associate(m.group(1), body)
        if method == "POST" and self.find("customapis", uniquename=path):
            return self._execute(path, body)
        if method == "POST" and path in REQUIRED:
            key = self._create(path, body, solution)
            return Response(status=204, headers={"OData-EntityId": f"{self.url}{API}{path}({key})"})
        if method == "PATCH" and (m := re.fullmatch(r"(\w+)\(([0-9a-f-]{36})\)", path)):
            entity_set, key = m.groups()
            if entity_set not in REQUIRED:
                raise Rejected(f"unknown entity set {entity_set}")
            if key in self.rows[entity_set]:
                self._update(entity_set, key, body)
            elif request.headers.get("If-Match") == "*":
                return _error(404, "0x80040217", "Does Not Exist")
            else:
                self._create(entity_set, {KEYS[entity_set]: key, **body}, solution)
            return Response(status=204)
        raise Rejected(f"no such write: {method} {path}")

    def _columns(self, entity_set: str, body: dict[str, Any], *, create: bool) -> dict[str, Any]:
        allowed = REQUIRED[entity_set] | OPTIONAL[entity_set] | {KEYS[entity_set]}
        unknown = sorted(set(body) - allowed)
        if unknown:
            raise Rejected(f"unknown columns for {entity_set}: {unknown}")
        if create:
            missing = sorted(REQUIRED[entity_set] - set(body))
            if missing:
                raise Rejected(f"{entity_set} requires {missing}")
        values: dict[str, Any] = {}
        for name, value in body.items():
            if name.endswith("@odata.bind"):
                nav = name.removesuffix("@odata.bind")
                target_set = BIND_TARGETS[nav]
                m = re.fullmatch(rf"/{target_set}\(([0-9a-f-]{{36}})\)", value)
                if not m or m.group(1) not in self.rows[target_set]:
                    raise Rejected(f"{name}: no such record {value}")
                column = "eventhandler" if nav == "eventhandler_plugintype" else nav.lower()
                values[f"_{column}_value"] = m.group(1)
            elif isinstance(value, list):
                continue  # deep insert children: handled by the caller
            else:
                values[name] = value
        return values

    def _create(self, entity_set: str, body: dict[str, Any], solution: str | None) -> str:
        if entity_set == "customapis" and solution is None:
            raise Rejected("create custom APIs with MSCRM.SolutionUniqueName")
        values = self._columns(entity_set, body, create=True)
        key = str(values.get(KEYS[entity_set]) or uuid.uuid4())
        if key in self.rows[entity_set]:
            raise Rejected(f"duplicate key {key} in {entity_set}")
        values[KEYS[entity_set]] = key
        if entity_set == "sdkmessageprocessingsteps":
            self._check_step(values)
        if entity_set == "systemusers" and self.find(
            "systemusers", applicationid=values["applicationid"]
        ):
            raise Rejected("only one application user per application id")
        self.rows[entity_set][key] = values
        if entity_set == "customapis":
            message = str(uuid.uuid4())
            self.rows["sdkmessages"][message] = {
                "sdkmessageid": message,
                "name": values["uniquename"],
            }
            for children, child_set in (
                ("CustomAPIRequestParameters", "customapirequestparameters"),
                ("CustomAPIResponseProperties", "customapiresponseproperties"),
            ):
                for child in body.get(children, []):
                    self._create(
                        child_set,
                        {**child, "CustomAPIId@odata.bind": f"/customapis({key})"},
                        solution,
                    )
        if solution is not None:
            self._in_solution(solution, key, entity_set)
        return key

    def _check_step(self, values: dict[str, Any]) -> None:
        message = self.rows["sdkmessages"][values["_sdkmessageid_value"]]["name"]
        apis = self.find("customapis", uniquename=message)
        if apis and values["stage"] != 30 and apis[0]["allowedcustomprocessingsteptype"] == 0:
            raise Rejected("this custom API allows no custom processing steps")
        if values["stage"] not in (10, 20, 40):
            raise Rejected(f"stage {values['stage']}")

    def _update(self, entity_set: str, key: str, body: dict[str, Any]) -> None:
        values = self._columns(entity_set, body, create=False)
        if entity_set == "customapis" and {
            "allowedcustomprocessingsteptype",
            "bindingtype",
            "isfunction",
            "uniquename",
        } & set(values):
            raise Rejected("these custom API columns cannot change")
        self.rows[entity_set][key].update(values)

    def _in_solution(self, solution: str, key: str, kind: str | int) -> None:
        (found,) = self.find("solutions", uniquename=solution)
        component = str(uuid.uuid4())
        self.rows["solutioncomponents"][component] = {
            "solutioncomponentid": component,
            "objectid": key,
            "componenttype": kind,
            "_solutionid_value": found["solutionid"],
        }

    def _create_table(self, body: dict[str, Any], solution: str | None) -> Response:
        if solution is None:
            raise Rejected("create tables with MSCRM.SolutionUniqueName")
        if body.get("@odata.type") != "Microsoft.Dynamics.CRM.EntityMetadata":
            raise Rejected("@odata.type")
        name = body["SchemaName"].lower()
        prefix = name.split("_", 1)[0]
        if not self.find("publishers", customizationprefix=prefix):
            raise Rejected(f"no publisher with prefix {prefix}")
        if name in self.entities:
            raise Rejected(f"table {name} exists")
        for label in ("DisplayName", "DisplayCollectionName"):
            if not body.get(label, {}).get("LocalizedLabels"):
                raise Rejected(f"{label} is required")
        if body.get("OwnershipType") not in ("UserOwned", "OrganizationOwned"):
            raise Rejected("OwnershipType")
        primary = [a for a in body.get("Attributes", []) if a.get("IsPrimaryName")]
        if len(primary) != 1 or primary[0].get("@odata.type") != (
            "Microsoft.Dynamics.CRM.StringAttributeMetadata"
        ):
            raise Rejected("one primary name StringAttributeMetadata is required")
        meta = self._add_entity(name)
        form = str(uuid.uuid4()).upper()  # as Dataverse may return it
        self.rows["systemforms"][form] = {
            "formid": form,
            "objecttypecode": name,
            "type": 2,
            "name": "Information",
        }
        self._in_solution(solution, meta["MetadataId"], 1)
        return Response(
            status=204,
            headers={"OData-EntityId": f"{self.url}{API}EntityDefinitions({meta['MetadataId']})"},
        )

    def _create_relationship(self, body: dict[str, Any], solution: str | None) -> Response:
        if solution is None:
            raise Rejected("create relationships with MSCRM.SolutionUniqueName")
        if body.get("@odata.type") != "Microsoft.Dynamics.CRM.OneToManyRelationshipMetadata":
            raise Rejected("@odata.type")
        referencing, referenced = body.get("ReferencingEntity"), body.get("ReferencedEntity")
        if referencing not in CIJ_TABLES or referenced not in self.entities:
            raise Rejected(f"relationship {referenced} -> {referencing}")
        # The CIJ docs' XML, field by field.
        name = f"{CIJ_TABLES[referencing]}_extendedentityid_{referenced}"
        expected = {
            "SchemaName": name,
            "ReferencedAttribute": f"{referenced}id",
            "ReferencedEntityNavigationPropertyName": name,
            "ReferencingEntityNavigationPropertyName": f"msdyn_extendedentityid_{referenced}",
            "CascadeConfiguration": {
                "Assign": "NoCascade",
                "Delete": "RemoveLink",
                "Merge": "NoCascade",
                "Reparent": "NoCascade",
                "Share": "NoCascade",
                "Unshare": "NoCascade",
                "RollupView": "NoCascade",
            },
        }
        wrong = [k for k, v in expected.items() if body.get(k) != v]
        lookup = body.get("Lookup") or {}
        if lookup.get("SchemaName") != "msdyn_extendedentityId" or lookup.get("@odata.type") != (
            "Microsoft.Dynamics.CRM.LookupAttributeMetadata"
        ):
            wrong.append("Lookup")
        if wrong:
            raise Rejected(f"relationship differs from the CIJ docs in {wrong}")
        if name in self.relationships:
            raise Rejected(f"relationship {name} exists")
        stored = {key: value for key, value in body.items() if key != "Lookup"}
        stored.update(MetadataId=str(uuid.uuid4()), ReferencingAttribute="msdyn_extendedentityid")
        self.relationships[name] = stored
        self._in_solution(solution, stored["MetadataId"], 10)
        return Response(status=204)

    def _update_relationship(self, key: str, body: dict[str, Any], request: Request) -> Response:
        if request.headers.get("MSCRM.MergeLabels") != "true":
            raise Rejected("update metadata with MSCRM.MergeLabels: true")
        (found,) = [r for r in self.relationships.values() if r["MetadataId"] == key]
        if body.get("SchemaName") != found["SchemaName"]:
            raise Rejected("PUT must carry the whole definition")
        found.update(body)
        return Response(status=204)

    def _add_privileges(self, role: str, body: dict[str, Any]) -> Response:
        if role not in self.rows["roles"]:
            raise Rejected("no such role")
        for item in body["Privileges"]:
            if item["PrivilegeId"] not in self.rows["privileges"] or item["Depth"] not in DEPTHS:
                raise Rejected(f"privilege {item}")
            self.role_privileges.setdefault(role, {})[item["PrivilegeId"]] = item["Depth"]
        return Response(status=204)

    def _add_component(self, body: dict[str, Any]) -> Response:
        if set(body) - {
            "ComponentId",
            "ComponentType",
            "SolutionUniqueName",
            "AddRequiredComponents",
            "DoNotIncludeSubcomponents",
        }:
            raise Rejected("AddSolutionComponent parameters")
        kind = body["ComponentType"]
        kinds = {1, 10, 90, 91, 92} | {meta["ObjectTypeCode"] for meta in self.entities.values()}
        if not isinstance(kind, int) or kind not in kinds:
            raise Rejected(f"ComponentType {kind!r}")
        if not self.find("solutions", uniquename=body["SolutionUniqueName"]):
            raise Rejected("no such solution")
        self._in_solution(body["SolutionUniqueName"], body["ComponentId"], kind)
        return _json({"id": str(uuid.uuid4())})

    def _associate(self, user: str, body: dict[str, Any]) -> Response:
        m = re.fullmatch(
            rf"{re.escape(self.url + API)}roles\(([0-9a-f-]+)\)", body.get("@odata.id", "")
        )
        if user not in self.rows["systemusers"] or not m or m.group(1) not in self.rows["roles"]:
            raise Rejected(f"$ref {body}")
        self.user_roles.setdefault(user, set()).add(m.group(1))
        return Response(status=204)

    def _execute(self, name: str, body: dict[str, Any]) -> Response:
        if set(body) != {"payload"} or not isinstance(body["payload"], str):
            raise Rejected(f"{name} takes one string parameter, payload")
        assert self.custom_api_handler is not None
        return _json(self.custom_api_handler(name, json.loads(body["payload"])))


def _json(body: Any) -> Response:
    return Response(json.dumps(body), content_type="application/json; odata.metadata=minimal")


def _error(status: int, code: str, message: str) -> Response:
    return Response(
        json.dumps({"error": {"code": code, "message": message}}),
        status=status,
        content_type="application/json",
    )


def _select(row: dict[str, Any] | None, args: Any) -> dict[str, Any]:
    assert row is not None
    if "$select" not in args:
        return dict(row)
    wanted = args["$select"].split(",")
    children = {k: v for k, v in row.items() if isinstance(v, list)}
    return {**{k: row.get(k) for k in wanted}, **children}


_CONDITION = re.compile(r"(\w+) eq ('(?:[^']|'')*'|null|[0-9a-f-]{36}|\d+)")


def _filter(rows: list[dict[str, Any]], args: Any) -> list[dict[str, Any]]:
    text = args.get("$filter")
    if text is None:
        return rows
    conditions = []
    for part in text.split(" and "):
        m = _CONDITION.fullmatch(part.strip())
        if not m:
            raise AssertionError(f"the fake does not understand $filter {text!r}")
        column, literal = m.groups()
        value: Any
        if literal == "null":
            value = None
        elif literal.startswith("'"):
            value = literal[1:-1].replace("''", "'")
        elif literal.isdigit():
            value = int(literal)
        else:
            value = literal
        conditions.append((column, value))

    def matches(row: dict[str, Any]) -> bool:
        for column, value in conditions:
            found = row.get(column)
            if isinstance(value, str) and isinstance(found, str):
                if found.lower() != value.lower():
                    return False
            elif found != value:
                return False
        return True

    return [row for row in rows if matches(row)]
