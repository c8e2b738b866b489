#!/usr/bin/env python3
"""A stand-in for the Lagoon API, for end-to-end tests with Lagoon core's
insights-handler. It executes every GraphQL request against the real schema
(../shared/lagoon-core/lagoon-api-schema.graphql) with graphql-core, so a bad
enum value, a missing String! or an Int over 2^31-1 is refused as the real
API refuses it; keeps the API's unique keys (facts: environment, name,
source; problems: environment, service, version, identifier); and records
every mutation.

  python3 hack/lagoon_api.py PORT [SCHEMA]

Endpoints besides POST /graphql (which needs a bearer token, as the real one):
  POST /seed       {"environments": [{"id", "name", "kubernetesNamespaceName",
                    "project": {"id", "name"}}]}
  GET  /mutations  {"mutations": [{"name", "input"}], "errors": [{"query", "errors"}]}
"""
import json
import sys
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

from graphql import GraphQLError, GraphQLScalarType, build_schema, graphql_sync
from graphql.language import ast

lock = threading.Lock()
environments = {}  # id -> environment dict
facts = {}  # (environment, name, source) -> fact
problems = {}  # (environment, service, version, identifier) -> problem
mutations = []
errors = []
next_id = [1]


def new_id():
    next_id[0] += 1
    return next_id[0]


def severity_score(value):
    # The real API's SeverityScore takes any number as a variable
    # (parseFloat), and only 0 to 1 as a literal in the query.
    try:
        return float(value)
    except (TypeError, ValueError):
        raise GraphQLError(f"SeverityScore must be a number, got {value!r}")


def severity_literal(node, _variables=None):
    if isinstance(node, (ast.FloatValueNode, ast.IntValueNode)) and 0 <= float(node.value) <= 1:
        return float(node.value)
    raise GraphQLError("SeverityScore literal must be a number from 0 to 1")


def record(name, value):
    mutations.append({"name": name, "input": value})


def env_by(key, value):
    return next((e for e in environments.values() if e.get(key) == value), None)


def resolve_project_by_name(_root, _info, name):
    with lock:
        return next((e["project"] for e in environments.values() if e["project"]["name"] == name), None)


def resolve_environment_by_name(_root, _info, name, project, includeDeleted=None):
    with lock:
        return next(
            (e for e in environments.values() if e["name"] == name and e["project"]["id"] == project), None
        )


def resolve_environment_by_id(_root, _info, id):
    with lock:
        return environments.get(id)


def resolve_environment_by_namespace(_root, _info, kubernetesNamespaceName, **_):
    with lock:
        return env_by("kubernetesNamespaceName", kubernetesNamespaceName)


def resolve_add_facts(_root, _info, input):
    with lock:
        out = []
        batch = input["facts"]
        keys = set()
        for f in batch:
            if f is None:
                raise GraphQLError("a fact is null")
            if f.get("environment") not in environments:
                raise GraphQLError(f"environment {f.get('environment')} does not exist")
            key = (f["environment"], f["name"], f["source"])
            if key in facts or key in keys:
                raise GraphQLError(f"Duplicate entry '{key}' for key 'environment'")
            keys.add(key)
        for f in batch:
            fact = dict(f, id=new_id())
            facts[(f["environment"], f["name"], f["source"])] = fact
            out.append(fact)
        record("addFacts", input)
        return out


def resolve_delete_facts_from_source(_root, _info, input):
    with lock:
        for k in [k for k in facts if k[0] == input["environment"] and k[2] == input["source"]]:
            del facts[k]
        record("deleteFactsFromSource", input)
        return "success"


def resolve_add_problem(_root, _info, input):
    with lock:
        if input["environment"] not in environments:
            raise GraphQLError(f"environment {input['environment']} does not exist")
        key = (input["environment"], input.get("service") or "", input.get("version") or "", input["identifier"])
        if key in problems:
            raise GraphQLError(f"Duplicate entry '{key}' for key 'environment'")
        problem = dict(input, id=new_id())
        problems[key] = problem
        record("addProblem", input)
        return problem


def resolve_delete_problems_from_source(_root, _info, input):
    with lock:
        for k in [
            k
            for k, p in problems.items()
            if k[0] == input["environment"] and p["source"] == input["source"] and k[1] == input["service"]
        ]:
            del problems[k]
        record("deleteProblemsFromSource", input)
        return "success"


def load_schema(path):
    schema = build_schema(Path(path).read_text(), assume_valid_sdl=True)
    score = schema.type_map["SeverityScore"]
    assert isinstance(score, GraphQLScalarType)
    score.serialize = severity_score
    score.parse_value = severity_score
    score.parse_literal = severity_literal
    q, m = schema.query_type.fields, schema.mutation_type.fields
    q["projectByName"].resolve = resolve_project_by_name
    q["environmentByName"].resolve = resolve_environment_by_name
    q["environmentById"].resolve = resolve_environment_by_id
    q["environmentByKubernetesNamespaceName"].resolve = resolve_environment_by_namespace
    m["addFacts"].resolve = resolve_add_facts
    m["deleteFactsFromSource"].resolve = resolve_delete_facts_from_source
    m["addProblem"].resolve = resolve_add_problem
    m["deleteProblemsFromSource"].resolve = resolve_delete_problems_from_source
    return schema


class Handler(BaseHTTPRequestHandler):
    schema = None

    def log_message(self, *_):
        pass

    def reply(self, status, body):
        data = json.dumps(body).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def body(self):
        return json.loads(self.rfile.read(int(self.headers.get("Content-Length", 0))) or b"{}")

    def do_GET(self):
        if self.path.startswith("/mutations"):
            with lock:
                return self.reply(200, {"mutations": mutations, "errors": errors})
        if self.path == "/healthz":
            return self.reply(200, {"status": "ok"})
        self.reply(404, {})

    def do_POST(self):
        req = self.body()
        if self.path == "/seed":
            with lock:
                for e in req.get("environments", []):
                    environments[e["id"]] = e
            return self.reply(200, {"seeded": len(environments)})
        if self.path != "/graphql":
            return self.reply(404, {})
        if not self.headers.get("Authorization", "").lower().startswith("bearer "):
            return self.reply(401, {"errors": [{"message": "Unauthorized"}]})
        result = graphql_sync(self.schema, req.get("query", ""), variable_values=req.get("variables"))
        out = {"data": result.data}
        if result.errors:
            out["errors"] = [e.formatted for e in result.errors]
            with lock:
                errors.append({"query": req.get("query", "")[:200], "variables": req.get("variables"), "errors": out["errors"]})
        self.reply(200, out)


def main():
    port = int(sys.argv[1])
    schema_path = sys.argv[2] if len(sys.argv) > 2 else str(
        Path(__file__).resolve().parent.parent.parent / "shared/lagoon-core/lagoon-api-schema.graphql"
    )
    Handler.schema = load_schema(schema_path)
    server = ThreadingHTTPServer(("127.0.0.1", port), Handler)
    print(f"lagoon-api stand-in on 127.0.0.1:{port}", flush=True)
    server.serve_forever()


if __name__ == "__main__":
    main()
