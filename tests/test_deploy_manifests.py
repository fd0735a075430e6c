"""The Kubernetes deployment in deploy/: schemas, the KEDA ScaledObject, and the links between the files.

Nothing here talks to a cluster. Three kinds of check:
- every Kubernetes object under deploy/kubernetes passes the OpenAPI schema of each Kubernetes version in
  K8S_VERSIONS, as kubernetes-validate ships it, in strict mode (an unknown or misspelt field fails);
- the KEDA ScaledObject passes the openAPIV3Schema of KEDA's own CRD (deploy/kubernetes/keda/crd/), made
  as strict as the API server's field validation, plus the CRD's one CEL rule, translated by hand;
- what no schema sees: roles, selectors, ports, environment names, the Secret, the autoscalers' caps,
  what the invoker pods hold and may do (issue 10), and the NetworkPolicies' table of who reaches whom.

Each semantic check returns a list of problems; the negative tests break a copy of the manifests and
assert that the check, or the validator, names the breakage.
"""

from __future__ import annotations

import copy
import hashlib
import os
import re
import shutil
import subprocess
import tomllib
from collections.abc import Callable
from pathlib import Path
from typing import Any

import jsonschema
import kubernetes_validate
import pytest
import typer.main
import yaml

from headrace.cli.main import app as headrace_cli

pytestmark = pytest.mark.db_independent("manifests and CLI parsing, no database")

ROOT = Path(__file__).resolve().parents[1]
DEPLOY = ROOT / "deploy"
K8S = DEPLOY / "kubernetes"
KUSTOMIZATION = K8S / "kustomization.yaml"
SCALEDOBJECT = K8S / "keda" / "scaledobject-invoker.yaml"
HPA = K8S / "hpa" / "hpa-invoker.yaml"
CRD = K8S / "keda" / "crd" / "keda.sh_scaledobjects.yaml"
CONTAINERFILE = DEPLOY / "Containerfile"
DOCKERIGNORE = ROOT / ".dockerignore"
CONFIG_PY = ROOT / "src" / "headrace" / "config.py"
#: The sandbox's own settings (HEADRACE_SANDBOX...), read where the sandbox is made.
SANDBOX_PY = ROOT / "src" / "headrace" / "functions" / "sandbox.py"

#: The oldest Kubernetes the manifests are meant for, and the newest whose schemas kubernetes-validate ships.
K8S_VERSIONS = ("1.30", "1.37")
#: The KEDA release the CRD in deploy/kubernetes/keda/crd/ comes from.
KEDA_VERSION = "v2.21.0"
#: `headrace ROLE`: the server roles a pod can run.
ROLES = ("door", "frontend", "pool", "controller", "invoker")
#: Roles that serve HTTP, with the ConfigMap variable that holds their port (None: a flag gives it).
HTTP_ROLES = {"door": "HEADRACE_DOOR_PORT", "frontend": "HEADRACE_API_PORT", "pool": None}
#: Variables that must come from the Secret, with the roles that need them and the Secret's key for each:
#: every role opens the shared database; the pools check pool tokens, not users, and the invokers never act
#: as admin, so both go without the admin key (a function must find no admin key in its pod, issue 10).
SECRET_VARS = {"HEADRACE_DB": ROLES, "HEADRACE_ADMIN_KEY": ("door", "frontend", "controller")}
SECRET_KEYS = {"HEADRACE_DB": "db-url", "HEADRACE_ADMIN_KEY": "admin-key"}
PEERS = K8S / "peers"
#: What headrace reckons one function worker needs (default_worker_cap in headrace.functions): 256 MiB.
WORKER_MIB = 256

Doc = dict[str, Any]


# --- loading ---------------------------------------------------------------------------------------------


def load(path: Path) -> list[Doc]:
    return [d for d in yaml.safe_load_all(path.read_text()) if d is not None]


def manifest_files() -> list[Path]:
    return sorted([*K8S.rglob("*.yaml"), *K8S.rglob("*.yml")])


def all_docs() -> list[tuple[Path, Doc]]:
    return [(path, doc) for path in manifest_files() for doc in load(path)]


def is_kustomization(doc: Doc) -> bool:
    return str(doc.get("apiVersion", "")).startswith("kustomize.config.k8s.io/")


def is_keda(doc: Doc) -> bool:
    return str(doc.get("apiVersion", "")).split("/")[0] == "keda.sh"


def kubernetes_docs() -> list[tuple[Path, Doc]]:
    """Objects of Kubernetes' own kinds (KEDA's CRD is one: apiextensions.k8s.io/v1)."""
    return [(p, d) for p, d in all_docs() if not is_kustomization(d) and not is_keda(d)]


def core_docs() -> list[Doc]:
    """What `kubectl apply -k deploy/kubernetes` applies: the files the kustomization lists."""
    return [doc for name in load(KUSTOMIZATION)[0]["resources"] for doc in load(K8S / name)]


def doc_id(path: Path, doc: Doc) -> str:
    return f"{path.relative_to(K8S)}:{doc.get('kind')}/{doc.get('metadata', {}).get('name')}"


def config_names() -> set[str]:
    """Every HEADRACE_* variable that src/headrace/config.py (or the sandbox, for its own) reads."""
    sources = [p.read_text() for p in (CONFIG_PY, SANDBOX_PY) if p.exists()]
    return {name for text in sources for name in re.findall(r'"(HEADRACE_[A-Z0-9_]+)"', text)}


def scaledobject() -> Doc:
    (doc,) = load(SCALEDOBJECT)
    return doc


def hpa() -> Doc:
    (doc,) = load(HPA)
    return doc


# --- accessors -------------------------------------------------------------------------------------------


def by_kind(docs: list[Doc], kind: str) -> list[Doc]:
    return [d for d in docs if d.get("kind") == kind]


def named(docs: list[Doc], kind: str, name: str) -> Doc | None:
    return next((d for d in by_kind(docs, kind) if d["metadata"]["name"] == name), None)


def workloads(docs: list[Doc]) -> list[Doc]:
    return [d for d in docs if d.get("kind") in ("Deployment", "StatefulSet")]


def pod_spec(workload: Doc) -> Doc:
    spec: Doc = workload["spec"]["template"]["spec"]
    return spec


def containers(workload: Doc) -> list[Doc]:
    spec = pod_spec(workload)
    return [*spec.get("initContainers", []), *spec["containers"]]


def role_of(workload: Doc) -> str:
    args = pod_spec(workload)["containers"][0].get("args") or [""]
    return str(args[0])


def workload_for(docs: list[Doc], role: str) -> Doc | None:
    return next((w for w in workloads(docs) if role_of(w) == role), None)


def selects(selector: dict[str, str], labels: dict[str, str]) -> bool:
    return bool(selector) and all(labels.get(k) == v for k, v in selector.items())


def env_config(docs: list[Doc]) -> dict[str, str]:
    """The data of every ConfigMap that some container loads with envFrom."""
    out: dict[str, str] = {}
    for w in workloads(docs):
        for c in containers(w):
            for src in c.get("envFrom", []):
                ref = src.get("configMapRef")
                cm = named(docs, "ConfigMap", ref["name"]) if ref else None
                if cm:
                    out.update(cm.get("data", {}))
    return out


def activations(docs: list[Doc]) -> dict[str, str]:
    """The Kafka contract of controller, invokers and autoscaler, as the ConfigMap gives it to the roles."""
    cfg = env_config(docs)
    return {
        "topic": cfg.get("HEADRACE_ACTIVATION_TOPIC", ""),
        "partitions": cfg.get("HEADRACE_ACTIVATION_PARTITIONS", "0"),
        "consumerGroup": cfg.get("HEADRACE_INVOKER_GROUP", ""),
        "transport": cfg.get("HEADRACE_ACTIVATIONS", ""),
    }


def port_names(container: Doc) -> dict[str | int, int]:
    ports: dict[str | int, int] = {}
    for p in container.get("ports", []):
        ports[p["containerPort"]] = p["containerPort"]
        if "name" in p:
            ports[p["name"]] = p["containerPort"]
    return ports


def image_uid() -> int:
    users = re.findall(r"^USER\s+(\S+)", CONTAINERFILE.read_text(), re.M)
    assert users, "the Containerfile sets no USER"
    return int(users[-1].split(":")[0])


# --- semantic checks: each returns its problems ----------------------------------------------------------


def check_roles(docs: list[Doc]) -> list[str]:
    problems = []
    for w in workloads(docs):
        name = w["metadata"]["name"]
        for c in pod_spec(w)["containers"]:
            if c.get("command") != ["headrace"]:
                problems.append(f"{name}/{c['name']}: command {c.get('command')!r} is not ['headrace']")
            if not c.get("args") or c["args"][0] not in ROLES:
                problems.append(f"{name}/{c['name']}: args {c.get('args')!r} start with no role of {ROLES}")
    roles = [role_of(w) for w in workloads(docs)]
    for role in ROLES:
        if roles.count(role) != 1:
            problems.append(f"role {role} is run by {roles.count(role)} workloads, not 1")
    pool = workload_for(docs, "pool")
    if pool and pool["kind"] != "StatefulSet":
        problems.append("the pools are not a StatefulSet")
    controller = workload_for(docs, "controller")
    if controller:
        if controller["spec"].get("replicas") != 1:
            problems.append("the controller runs more (or fewer) than 1 replica")
        if controller["spec"].get("strategy", {}).get("type") != "Recreate":
            problems.append("the controller's rollout can overlap two controllers (strategy is not Recreate)")
    door = workload_for(docs, "door")
    frontend_svc = named(docs, "Service", "headrace-frontend")
    if door and frontend_svc:
        args = pod_spec(door)["containers"][0]["args"]
        api = args[args.index("--api") + 1] if "--api" in args else ""
        want = f"http://{frontend_svc['metadata']['name']}:{frontend_svc['spec']['ports'][0]['port']}"
        if api != want:
            problems.append(f"the door's --api is {api!r}, not the frontend Service {want!r}")
    return problems


def check_services(docs: list[Doc]) -> list[str]:
    problems = []
    for w in workloads(docs):
        match = w["spec"]["selector"].get("matchLabels", {})
        if not selects(match, w["spec"]["template"]["metadata"].get("labels", {})):
            problems.append(f"{w['metadata']['name']}: selector {match} does not match its own pod labels")
    for svc in by_kind(docs, "Service"):
        name, selector = svc["metadata"]["name"], svc["spec"].get("selector", {})
        hits = [w for w in workloads(docs) if selects(selector, w["spec"]["template"]["metadata"]["labels"])]
        if len(hits) != 1:
            problems.append(f"Service {name}: selector {selector} matches {len(hits)} workloads, not 1")
            continue
        ports = {k: v for c in containers(hits[0]) for k, v in port_names(c).items()}
        for p in svc["spec"]["ports"]:
            if p.get("targetPort", p["port"]) not in ports:
                problems.append(f"Service {name}: targetPort {p.get('targetPort')!r} is no port of its pods")
    for role in ("door", "frontend", "pool"):
        served = workload_for(docs, role)
        if served and not any(
            selects(s["spec"].get("selector", {}), served["spec"]["template"]["metadata"]["labels"])
            for s in by_kind(docs, "Service")
        ):
            problems.append(f"no Service selects the {role} pods")
    for sts in by_kind(docs, "StatefulSet"):
        headless = named(docs, "Service", sts["spec"].get("serviceName", ""))
        if headless is None or headless["spec"].get("clusterIP") != "None":
            problems.append(f"StatefulSet {sts['metadata']['name']}: serviceName names no headless Service")
    return problems


def check_pdbs(docs: list[Doc]) -> list[str]:
    problems = []
    covered = set()
    for pdb in by_kind(docs, "PodDisruptionBudget"):
        name, match = pdb["metadata"]["name"], pdb["spec"]["selector"].get("matchLabels", {})
        hits = [w for w in workloads(docs) if selects(match, w["spec"]["template"]["metadata"]["labels"])]
        if len(hits) != 1:
            problems.append(f"PDB {name}: selects {len(hits)} workloads, not 1")
            continue
        covered.add(role_of(hits[0]))
        replicas = hits[0]["spec"].get("replicas", 1)
        if "minAvailable" in pdb["spec"] and not isinstance(pdb["spec"]["minAvailable"], int):
            problems.append(f"PDB {name}: give minAvailable as a count")
        elif pdb["spec"].get("minAvailable", 0) >= replicas or pdb["spec"].get("maxUnavailable", 1) == 0:
            problems.append(f"PDB {name}: no pod of {replicas} may ever be evicted, so no node can be drained")
    for role in HTTP_ROLES:
        if role not in covered:
            problems.append(f"no PodDisruptionBudget covers the {role}s")
    return problems


def check_env(docs: list[Doc], known: set[str]) -> list[str]:
    problems = []
    for key in env_config(docs):
        if key not in known:
            problems.append(f"ConfigMap key {key} is loaded as a variable that config.py does not read")
    for w in workloads(docs):
        for c in containers(w):
            where = f"{w['metadata']['name']}/{c['name']}"
            for e in c.get("env", []):
                downward = "fieldRef" in e.get("valueFrom", {})
                if e["name"] not in known and not (downward and not e["name"].startswith("HEADRACE_")):
                    problems.append(f"{where}: {e['name']} is not a variable config.py reads")
                ref = e.get("valueFrom", {}).get("configMapKeyRef")
                if ref and ref["key"] not in (named(docs, "ConfigMap", ref["name"]) or {}).get("data", {}):
                    problems.append(f"{where}: {e['name']} refers to a missing ConfigMap key")
            for src in c.get("envFrom", []):
                ref = src.get("configMapRef") or src.get("secretRef")
                kind = "ConfigMap" if "configMapRef" in src else "Secret"
                if named(docs, kind, ref["name"]) is None:
                    problems.append(f"{where}: envFrom names a {kind} {ref['name']} that is not deployed")
                if kind == "Secret":
                    problems.append(f"{where}: load the Secret key by key (secretKeyRef), not whole")
    return problems


def check_secret(docs: list[Doc]) -> list[str]:
    problems = []
    secrets = by_kind(docs, "Secret")
    if len(secrets) != 1:
        return [f"{len(secrets)} Secrets, not 1"]
    secret = secrets[0]
    values = {**secret.get("stringData", {}), **secret.get("data", {})}
    for key, value in secret.get("stringData", {}).items():
        if "CHANGE-ME" not in value:
            problems.append(f"Secret key {key} holds no clearly marked placeholder (CHANGE-ME)")
    for cm in by_kind(docs, "ConfigMap"):
        for var in SECRET_VARS:
            if var in cm.get("data", {}):
                problems.append(f"ConfigMap {cm['metadata']['name']} inlines {var}")
    for w in workloads(docs):
        for c in containers(w):
            where = f"{w['metadata']['name']}/{c['name']}"
            env = {e["name"]: e for e in c.get("env", [])}
            for e in c.get("env", []):
                ref = e.get("valueFrom", {}).get("secretKeyRef") or {}
                held = [var for var, key in SECRET_KEYS.items() if ref.get("key") == key]
                if held and role_of(w) not in SECRET_VARS[held[0]]:
                    problems.append(
                        f"{where}: holds the Secret's {ref['key']} as {e['name']}, which {role_of(w)} must not"
                    )
            for var in SECRET_VARS:
                if var not in env:
                    if role_of(w) in SECRET_VARS[var]:
                        problems.append(f"{where}: {var} is not set (role {role_of(w)} needs it)")
                    continue
                if role_of(w) not in SECRET_VARS[var]:
                    problems.append(f"{where}: {var} is set, and role {role_of(w)} must not hold it")
                ref = env[var].get("valueFrom", {}).get("secretKeyRef")
                if "value" in env[var] or not ref:
                    problems.append(f"{where}: {var} is inlined, not taken from the Secret")
                elif ref["name"] != secret["metadata"]["name"] or ref["key"] not in values:
                    problems.append(f"{where}: {var} refers to a key the Secret does not have")
        for v in pod_spec(w).get("volumes", []):
            sources = [v, *v.get("projected", {}).get("sources", [])]
            if any("secret" in s for s in sources):
                problems.append(f"{w['metadata']['name']}: volume {v['name']} mounts a Secret (take keys one by one)")
    others = [yaml.safe_dump(d) for d in docs if d.get("kind") != "Secret"]
    others += [p.read_text() for p in DEPLOY.rglob("*") if p.is_file() and p.name != "secret.yaml"]
    for key, value in values.items():
        if value and any(value in text for text in others):
            problems.append(f"the Secret's {key} is repeated outside secret.yaml")
    return problems


def check_security(docs: list[Doc], uid: int) -> list[str]:
    problems = []
    data_dir = env_config(docs).get("HEADRACE_DATA", "")
    for w in workloads(docs):
        name, spec = w["metadata"]["name"], pod_spec(w)
        if spec.get("automountServiceAccountToken") is not False:
            problems.append(f"{name}: mounts a service account token (no role uses the Kubernetes API)")
        if spec.get("enableServiceLinks") is not False:
            problems.append(f"{name}: service links would set HEADRACE_DOOR_PORT=tcp://... (see door.yaml)")
        psc = spec.get("securityContext", {})
        if psc.get("runAsNonRoot") is not True or psc.get("runAsUser") != uid or uid == 0:
            problems.append(f"{name}: pod does not run as the image's non-root user {uid}")
        if psc.get("seccompProfile", {}).get("type") != "RuntimeDefault":
            problems.append(f"{name}: no RuntimeDefault seccomp profile")
        for host in ("hostNetwork", "hostPID", "hostIPC"):
            if spec.get(host):
                problems.append(f"{name}: {host} shares the node's namespace")
        for c in containers(w):
            where, csc = f"{name}/{c['name']}", c.get("securityContext", {})
            if csc.get("capabilities", {}).get("add"):
                problems.append(f"{where}: adds capabilities {csc['capabilities']['add']}")
            if role_of(w) != "invoker":  # the one exception, for bubblewrap: check_sandbox
                if csc.get("seccompProfile", {}).get("type", "RuntimeDefault") != "RuntimeDefault":
                    problems.append(f"{where}: seccomp profile {csc['seccompProfile']} is not RuntimeDefault")
                if csc.get("appArmorProfile", {}).get("type", "RuntimeDefault") != "RuntimeDefault":
                    problems.append(f"{where}: AppArmor profile {csc['appArmorProfile']} is not RuntimeDefault")
                if csc.get("procMount", "Default") != "Default":
                    problems.append(f"{where}: procMount {csc['procMount']} unmasks /proc")
            if csc.get("allowPrivilegeEscalation") is not False or csc.get("privileged"):
                problems.append(f"{where}: privilege escalation is not ruled out")
            if csc.get("readOnlyRootFilesystem") is not True:
                problems.append(f"{where}: root filesystem is writable")
            if "ALL" not in csc.get("capabilities", {}).get("drop", []):
                problems.append(f"{where}: capabilities are not all dropped")
            res = c.get("resources", {})
            if not {"cpu", "memory"} <= set(res.get("requests", {})) or "memory" not in res.get("limits", {}):
                problems.append(f"{where}: no CPU and memory requests and memory limit")
            mounts = {m["mountPath"] for m in c.get("volumeMounts", [])}
            for path in (data_dir, "/tmp"):
                if path not in mounts:
                    problems.append(f"{where}: {path} is not a volume, and the root filesystem is read-only")
    return problems


#: What a container running bubblewrap may relax, and how (docs/security.md, "Kubernetes"): its own
#: seccomp and AppArmor profile (the runtime defaults refuse unshare(2)/mount(2)), an unmasked /proc (a
#: sandbox mounts a fresh one), only in a user-namespaced pod.
SANDBOX_PROFILES = ("Unconfined", "Localhost")


def check_sandbox(docs: list[Doc]) -> list[str]:
    """The invoker pods run functions in bubblewrap: what they relax for it, and nothing more."""
    invoker = workload_for(docs, "invoker")
    if invoker is None:
        return ["no invoker"]
    problems = []
    spec = pod_spec(invoker)
    settings = env_config(docs) | {e["name"]: e.get("value") for c in containers(invoker) for e in c.get("env", [])}
    if str(settings.get("HEADRACE_SANDBOX", "bubblewrap")).lower() != "bubblewrap":
        problems.append(
            f"invoker: HEADRACE_SANDBOX is {settings['HEADRACE_SANDBOX']!r}: functions would run unsandboxed"
        )
    if spec.get("hostUsers") is not False:
        problems.append("invoker: hostUsers is not false, so its uids (and its sandboxes') are the node's")
    relaxed = []
    for c in containers(invoker):
        where, csc = f"invoker/{c['name']}", c.get("securityContext", {})
        if csc.get("procMount") != "Unmasked":
            problems.append(f"{where}: procMount is not Unmasked, so a sandbox cannot mount its own /proc")
        for field in ("seccompProfile", "appArmorProfile"):
            kind = csc.get(field, {}).get("type")
            if kind not in SANDBOX_PROFILES:
                problems.append(
                    f"{where}: {field} {kind} refuses what bubblewrap needs (use one of {SANDBOX_PROFILES})"
                )
            elif kind == "Unconfined":
                relaxed.append(field)
    (ns,) = by_kind(docs, "Namespace")
    labels = ns["metadata"].get("labels", {})
    enforce = labels.get("pod-security.kubernetes.io/enforce")
    # Baseline refuses Unconfined seccomp/AppArmor profiles; with Localhost ones it admits the invoker.
    if enforce != ("privileged" if relaxed else "baseline"):
        problems.append(f"namespace: Pod Security {enforce!r} does not admit the invoker pods")
    for mode in ("warn", "audit"):
        if labels.get(f"pod-security.kubernetes.io/{mode}") != "restricted":
            problems.append(f"namespace: Pod Security {mode} is not restricted, so drift in other pods goes unseen")
    return problems


# --- network policies ------------------------------------------------------------------------------------

#: Who talks to whom (deploy/kubernetes/networkpolicy.yaml's table): for each role, the peers it accepts
#: and the peers it reaches, as (peer, port-setting). A peer is a role, "any" (no `from`: clients), "kafka"
#: or "postgres"; ports are resolved from the settings by `service_ports`. DNS is every pod's, apart.
#: Functions have no network at all (empty network namespace, issue 10); the invoker pod that runs them
#: reaches Kafka, PostgreSQL, the doors and the frontends, and never a pool.
ACCEPTS = {
    "door": {("any", "door")},
    "frontend": {("any", "frontend")},
    "pool": {("door", "pool"), ("frontend", "pool")},
    "controller": set(),
    "invoker": set(),
}
REACHES = {
    "door": {("pool", "pool"), ("postgres", "postgres")},
    "frontend": {("pool", "pool"), ("postgres", "postgres"), ("kafka", "kafka")},
    "pool": {("postgres", "postgres")},
    "controller": {("postgres", "postgres"), ("kafka", "kafka")},
    "invoker": {("kafka", "kafka"), ("postgres", "postgres"), ("door", "door"), ("frontend", "frontend")},
}
COMPONENT = "app.kubernetes.io/component"
NS_NAME = "kubernetes.io/metadata.name"


def host_port(address: str) -> tuple[str, int]:
    host, _, port = address.rpartition(":")
    return host, int(port)


def svc_namespace(host: str) -> str | None:
    """`NAME.NAMESPACE.svc[.cluster.local]`: the namespace; None for a host outside the cluster."""
    parts = host.split(".")
    return parts[1] if len(parts) >= 3 and parts[2] == "svc" else None


def service_ports(docs: list[Doc]) -> dict[str, tuple[str | None, int]]:
    """Where each peer listens, from the settings the pods get: (namespace or None, port)."""
    cfg = env_config(docs)
    pool = workload_for(docs, "pool")
    args = pod_spec(pool)["containers"][0]["args"] if pool else []
    kafka_host, kafka_port = host_port(cfg.get("HEADRACE_KAFKA", "").split(",")[0])
    secret = named(docs, "Secret", "headrace-secrets") or {}
    db = re.sub(r"^[a-z0-9+]+://([^@/]*@)?", "", secret.get("stringData", {}).get("db-url", "")).split("/")[0]
    db_host, db_port = host_port(db if ":" in db else f"{db}:5432")
    return {
        "door": (None, int(cfg.get("HEADRACE_DOOR_PORT", 0))),
        "frontend": (None, int(cfg.get("HEADRACE_API_PORT", 0))),
        "pool": (None, int(args[args.index("--port") + 1]) if "--port" in args else 0),
        "kafka": (svc_namespace(kafka_host), kafka_port),
        "postgres": (svc_namespace(db_host), db_port),
    }


def peer_names(rule_peers: list[Doc] | None, docs: list[Doc]) -> list[str]:
    """What the peers of one ingress/egress rule are: roles by their pods' component label, "kafka" and
    "postgres" by the namespace their settings name, "dns", or "any" (no peers: everything)."""
    if rule_peers is None:
        return ["any"]
    where = {ns: name for name, (ns, _) in service_ports(docs).items() if ns}
    out = []
    for peer in rule_peers:
        pods = peer.get("podSelector", {}).get("matchLabels", {})
        ns = peer.get("namespaceSelector", {}).get("matchLabels", {}).get(NS_NAME)
        if "ipBlock" in peer:
            out.append(f"ip:{peer['ipBlock']['cidr']}")
        elif "namespaceSelector" in peer and ns is None:
            out.append(f"namespaces:{peer['namespaceSelector']}")
        elif ns == "kube-system" and pods.get("k8s-app") == "kube-dns":
            out.append("dns")
        elif ns is not None:
            out.append(where.get(ns, f"namespace:{ns}"))
        elif set(pods) == {"app.kubernetes.io/name", COMPONENT} and pods[COMPONENT] in ROLES:
            out.append(pods[COMPONENT])
        else:
            out.append(f"pods:{peer.get('podSelector')}")
    return out


def policy_edges(docs: list[Doc], role: str, direction: str) -> set[tuple[str, int]]:
    """(peer, port) pairs that the NetworkPolicies selecting `role`'s pods allow in `direction`
    ("ingress" or "egress"); a rule without ports counts as port 0 (every port)."""
    workload = workload_for(docs, role)
    labels = workload["spec"]["template"]["metadata"]["labels"] if workload else {}
    kind = direction.capitalize()
    edges = set()
    for pol in by_kind(docs, "NetworkPolicy"):
        spec = pol["spec"]
        selector = spec.get("podSelector", {}).get("matchLabels", {})
        if (selector and not selects(selector, labels)) or kind not in spec.get("policyTypes", []):
            continue
        for rule in spec.get(direction, []):
            peers = peer_names(rule.get("from" if direction == "ingress" else "to"), docs)
            ports = [int(p.get("port", 0)) for p in rule.get("ports", [])] or [0]
            edges |= {(peer, port) for peer in peers for port in ports}
    return edges


def check_network(docs: list[Doc]) -> list[str]:
    problems = []
    policies = by_kind(docs, "NetworkPolicy")
    deny = [
        p
        for p in policies
        if p["spec"].get("podSelector") == {}
        and set(p["spec"].get("policyTypes", [])) == {"Ingress", "Egress"}
        and not p["spec"].get("ingress")
        and not p["spec"].get("egress")
    ]
    if not deny:
        problems.append("no default-deny NetworkPolicy (podSelector {}, Ingress and Egress, no rules)")
    ports = service_ports(docs)
    dns = {("dns", 53)}
    for role in ROLES:
        want_in = {(peer, ports[where][1]) for peer, where in ACCEPTS[role]}
        want_out = {(peer, ports[where][1]) for peer, where in REACHES[role]} | dns
        got_in, got_out = policy_edges(docs, role, "ingress"), policy_edges(docs, role, "egress")
        for extra in sorted(got_in - want_in):
            problems.append(f"{role}: accepts {extra[0]} on port {extra[1] or 'any'}, which it must not")
        for extra in sorted(got_out - want_out):
            problems.append(f"{role}: reaches {extra[0]} on port {extra[1] or 'any'}, which it must not")
        for missing in sorted(want_in - got_in):
            problems.append(f"{role}: does not accept {missing[0]} on port {missing[1]}")
        for missing in sorted(want_out - got_out):
            problems.append(f"{role}: cannot reach {missing[0]} on port {missing[1]}")
    for name in ("kafka", "postgres"):
        if ports[name][0] is None:
            problems.append(f"{name} is outside the cluster: the policies need an ipBlock for it, and this check")
    if env_config(docs).get("HEADRACE_DOOR_REDIRECT", "").lower() in ("1", "true", "yes", "on"):
        problems.append("HEADRACE_DOOR_REDIRECT sends clients to the pools, which accept only doors and frontends")
    return problems


#: KEDA's operator, which reads the invokers' lag from Kafka (peers/kafka.yaml lets it in).
KEDA_OPERATOR = {"matchLabels": {"app": "keda-operator"}}


def peer_policies() -> list[Doc]:
    return [doc for path in sorted(PEERS.glob("*.yaml")) for doc in load(path)]


def check_peers(docs: list[Doc], peers: list[Doc]) -> list[str]:
    """PostgreSQL and Kafka accept headrace's pods of exactly the roles whose egress reaches them."""
    problems = []
    ports = service_ports(docs)
    for name in ("kafka", "postgres"):
        ns, port = ports[name]
        mine = [p for p in peers if p["metadata"].get("namespace") == ns]
        if len(mine) != 1:
            problems.append(f"{name}: {len(mine)} policies in its namespace {ns} in peers/, not 1")
            continue
        want = {role for role in ROLES if (name, port) in policy_edges(docs, role, "egress")}
        got: set[str] = set()
        rules = mine[0]["spec"]["ingress"]
        for peer, rule in [(peer, r) for r in rules for peer in r.get("from", [{}])]:
            if [int(p["port"]) for p in rule.get("ports", [])] != [port]:
                problems.append(f"{name}: a rule's ports are not [{port}]")
            peer_ns = peer.get("namespaceSelector", {}).get("matchLabels", {}).get(NS_NAME)
            if name == "kafka" and peer_ns == "keda" and peer.get("podSelector") == KEDA_OPERATOR:
                continue  # the autoscaler reads the consumer group's lag
            if peer_ns != "headrace":
                problems.append(f"{name}: a peer outside namespace headrace: {peer}")
                continue
            exprs = {e["key"]: e for e in peer.get("podSelector", {}).get("matchExpressions", [])}
            comp = exprs.get(COMPONENT, {})
            if comp.get("operator") != "In":
                problems.append(f"{name}: a peer not narrowed to headrace roles: {peer}")
                continue
            got |= set(comp["values"])
        if got != want:
            problems.append(f"{name}: accepts roles {sorted(got)}, but {sorted(want)} reach it")
    return problems


def check_probes(docs: list[Doc]) -> list[str]:
    problems = []
    cfg = env_config(docs)
    for w in workloads(docs):
        role = role_of(w)
        c = pod_spec(w)["containers"][0]
        ports = port_names(c)
        if role in HTTP_ROLES:
            var = HTTP_ROLES[role]
            args = c.get("args", [])
            want = int(cfg.get(var, 0) if var else args[args.index("--port") + 1] if "--port" in args else 0)
            if want not in ports.values():
                problems.append(f"{role}: declares no containerPort {want} ({var or '--port'})")
            for kind in ("readinessProbe", "livenessProbe"):
                get = c.get(kind, {}).get("httpGet", {})
                if get.get("path") != "/healthz" or ports.get(get.get("port")) != want:
                    problems.append(f"{role}: {kind} is not GET /healthz on port {want}")
        elif role in ("controller", "invoker"):
            for kind in ("readinessProbe", "livenessProbe", "startupProbe"):
                if any(k in c.get(kind, {}) for k in ("httpGet", "tcpSocket", "grpc")):
                    problems.append(f"{role}: {kind} probes a server the {role} does not run")
    return problems


def check_pool_storage(docs: list[Doc]) -> list[str]:
    pool = workload_for(docs, "pool")
    if pool is None or pool["kind"] != "StatefulSet":
        return ["no pool StatefulSet"]
    problems = []
    templates = {t["metadata"]["name"]: t for t in pool["spec"].get("volumeClaimTemplates", [])}
    if not templates:
        problems.append("pool: no volumeClaimTemplates, so pool data lives and dies with the pod")
    for t in templates.values():
        if "storage" not in t["spec"].get("resources", {}).get("requests", {}):
            problems.append(f"pool: volume claim {t['metadata']['name']} requests no storage size")
    c = pod_spec(pool)["containers"][0]
    args = c["args"]
    data = args[args.index("--data") + 1] if "--data" in args else None
    on_claims = [m["mountPath"] for m in c.get("volumeMounts", []) if m["name"] in templates]
    if data is None or not any(Path(data).is_relative_to(m) for m in on_claims):
        problems.append(f"pool: --data {data} is not on a mounted volume claim")
    retention = pool["spec"].get("persistentVolumeClaimRetentionPolicy", {})
    if retention.get("whenScaled") == "Delete" or retention.get("whenDeleted") == "Delete":
        problems.append("pool: volumes are deleted with their pods")
    return problems


def check_invoker_workers(docs: list[Doc]) -> list[str]:
    invoker = workload_for(docs, "invoker")
    if invoker is None:
        return ["no invoker"]
    c = pod_spec(invoker)["containers"][0]
    env = {e["name"]: e.get("value") for e in c.get("env", [])}
    workers = env.get("HEADRACE_FN_MAX_WORKERS")
    if not workers or not workers.isdigit() or int(workers) == 0:
        return ["invoker: HEADRACE_FN_MAX_WORKERS unset, so the cap follows the node's CPUs, not the pod's"]
    limit = c["resources"]["limits"]["memory"]
    mib = int(limit[:-2]) * {"Mi": 1, "Gi": 1024}[limit[-2:]]
    if int(workers) * WORKER_MIB > mib:
        return [f"invoker: {workers} workers x {WORKER_MIB} MiB exceed the memory limit {limit}"]
    return []


def check_scaledobject(docs: list[Doc], so: Doc) -> list[str]:
    problems = []
    spec = so["spec"]
    contract = activations(docs)
    partitions = int(contract["partitions"])
    if contract["transport"] != "kafka":
        problems.append("HEADRACE_ACTIVATIONS is not kafka: the invokers would never get an activation")
    invoker = workload_for(docs, "invoker")
    ref = spec.get("scaleTargetRef", {})
    if invoker is None or invoker["kind"] != "Deployment":
        problems.append("no invoker Deployment")
    elif (ref.get("kind", "Deployment"), ref.get("name")) != ("Deployment", invoker["metadata"]["name"]):
        problems.append(f"scaleTargetRef {ref} is not the invoker Deployment {invoker['metadata']['name']}")
    elif "replicas" in invoker["spec"]:
        problems.append("the invoker Deployment sets replicas, which every apply resets under the autoscaler")
    if so["metadata"].get("namespace") != (invoker or {}).get("metadata", {}).get("namespace"):
        problems.append("the ScaledObject is not in the invoker's namespace")
    if spec.get("minReplicaCount") != 0:
        problems.append(f"minReplicaCount is {spec.get('minReplicaCount')}, not 0 (scale to zero)")
    if spec.get("maxReplicaCount") != partitions:
        problems.append(f"maxReplicaCount {spec.get('maxReplicaCount')} is not the partition count {partitions}")
    for knob in ("pollingInterval", "cooldownPeriod"):
        if not isinstance(spec.get(knob), int) or spec[knob] <= 0:
            problems.append(f"{knob} is not set to a positive number of seconds")
    behavior = spec.get("advanced", {}).get("horizontalPodAutoscalerConfig", {}).get("behavior", {})
    if not {"scaleUp", "scaleDown"} <= set(behavior):
        problems.append("no HPA behavior for both scaleUp and scaleDown")
    kafka = [t for t in spec.get("triggers", []) if t.get("type") == "kafka"]
    if len(kafka) != 1 or len(spec.get("triggers", [])) != 1:
        return [*problems, "not exactly one trigger, of type kafka"]
    meta = kafka[0]["metadata"]
    want = {
        "topic": contract["topic"],
        "consumerGroup": contract["consumerGroup"],
        "bootstrapServers": env_config(docs).get("HEADRACE_KAFKA"),
        "allowIdleConsumers": "false",
        "offsetResetPolicy": "earliest",
    }
    for key, value in want.items():
        if meta.get(key) != value:
            problems.append(f"kafka trigger {key} is {meta.get(key)!r}, not {value!r}")
    for key, least in (("lagThreshold", 1), ("activationLagThreshold", 0)):
        raw = meta.get(key, "")
        if not (isinstance(raw, str) and raw.isdigit() and int(raw) >= least):
            problems.append(f"kafka trigger {key} {raw!r} is not an integer >= {least}")
    if meta.get("allowIdleConsumers") == "true" and meta.get("limitToPartitionsWithLag") == "true":
        problems.append("allowIdleConsumers and limitToPartitionsWithLag are both true (KEDA refuses that)")
    if meta.get("limitToPartitionsWithLag") == "true" and not meta.get("topic"):
        problems.append("limitToPartitionsWithLag needs a topic")
    return problems


def check_hpa(docs: list[Doc], h: Doc) -> list[str]:
    problems = []
    invoker = workload_for(docs, "invoker")
    partitions = int(activations(docs)["partitions"])
    ref = h["spec"]["scaleTargetRef"]
    if invoker is None or (ref["kind"], ref["name"]) != ("Deployment", invoker["metadata"]["name"]):
        problems.append(f"scaleTargetRef {ref} is not the invoker Deployment")
    if h["spec"].get("minReplicas", 1) < 1:
        problems.append("minReplicas below 1: a CPU-driven HPA cannot wake from zero")
    if h["spec"]["maxReplicas"] > partitions:
        problems.append(f"maxReplicas {h['spec']['maxReplicas']} exceeds the partition count {partitions}")
    cpu = [m for m in h["spec"].get("metrics", []) if m.get("resource", {}).get("name") == "cpu"]
    if not cpu or cpu[0]["resource"]["target"]["type"] != "Utilization":
        problems.append("no CPU utilisation metric")
    if invoker and not all("cpu" in c.get("resources", {}).get("requests", {}) for c in containers(invoker)):
        problems.append("the invoker has no CPU request, so its utilisation is undefined")
    return problems


def cel_rules(so: Doc) -> list[str]:
    """The CRD's x-kubernetes-validations rule on spec, which no JSON Schema validator evaluates:
    `!has(self.minReplicaCount) || self.minReplicaCount <= (has(self.maxReplicaCount) ? self.maxReplicaCount : 100)`."""
    spec = so["spec"]
    if "minReplicaCount" in spec and spec["minReplicaCount"] > spec.get("maxReplicaCount", 100):
        return ["minReplicaCount must be less than or equal to maxReplicaCount"]
    return []


# --- the KEDA CRD schema ---------------------------------------------------------------------------------


def crd_doc() -> Doc:
    (doc,) = load(CRD)
    return doc


def strict(schema: Any) -> Any:
    """The CRD's structural schema as the API server applies it with strict field validation (kubectl's
    default since 1.27): unknown fields are errors wherever the schema lists properties and does not say
    x-kubernetes-preserve-unknown-fields; int32 has its range; int-or-string takes an int or a string."""
    if isinstance(schema, list):
        return [strict(s) for s in schema]
    if not isinstance(schema, dict):
        return schema
    out = {k: strict(v) if k in ("items", "additionalProperties", "not") else v for k, v in schema.items()}
    for key in ("properties", "patternProperties"):
        if key in schema:
            out[key] = {name: strict(sub) for name, sub in schema[key].items()}
    for key in ("allOf", "anyOf", "oneOf"):
        if key in schema:
            out[key] = strict(schema[key])
    open_ended = "additionalProperties" in schema or schema.get("x-kubernetes-preserve-unknown-fields")
    if "properties" in schema and not open_ended:
        out["additionalProperties"] = False
    if schema.get("format") == "int32":
        out.setdefault("minimum", -(2**31))
        out.setdefault("maximum", 2**31 - 1)
    if schema.get("x-kubernetes-int-or-string") and "type" not in schema:
        out.pop("pattern", None)
        out["anyOf"] = [{"type": "integer"}, {"type": "string", "pattern": schema.get("pattern", "")}]
    return out


def scaledobject_validator() -> jsonschema.protocols.Validator:
    crd = crd_doc()
    (version,) = [v for v in crd["spec"]["versions"] if v["served"] and v["storage"]]
    schema = strict(version["schema"]["openAPIV3Schema"])
    cls = jsonschema.validators.Draft4Validator
    cls.check_schema(schema)
    return cls(schema)


def crd_problems(so: Doc) -> list[str]:
    crd = crd_doc()
    versions = {f"{crd['spec']['group']}/{v['name']}" for v in crd["spec"]["versions"] if v["served"]}
    problems = [f"{'/'.join(map(str, e.absolute_path))}: {e.message}" for e in scaledobject_validator().iter_errors(so)]
    if so.get("apiVersion") not in versions:
        problems.append(f"apiVersion {so.get('apiVersion')} is not served by the CRD ({sorted(versions)})")
    if so.get("kind") != crd["spec"]["names"]["kind"]:
        problems.append(f"kind {so.get('kind')} is not {crd['spec']['names']['kind']}")
    if not so.get("metadata", {}).get("name"):
        problems.append("no metadata.name")
    return problems + cel_rules(so)


# --- tests: files ----------------------------------------------------------------------------------------


def test_the_expected_objects_are_there() -> None:
    kinds = sorted(f"{d['kind']}/{d['metadata']['name']}" for d in core_docs())
    for want in (
        "Namespace/headrace",
        "ConfigMap/headrace-config",
        "Secret/headrace-secrets",
        "Deployment/headrace-door",
        "Deployment/headrace-frontend",
        "Deployment/headrace-controller",
        "Deployment/headrace-invoker",
        "StatefulSet/headrace-pool",
        "Service/headrace-door",
        "Service/headrace-frontend",
        "Service/headrace-pool",
        "PodDisruptionBudget/headrace-door",
        "PodDisruptionBudget/headrace-frontend",
        "PodDisruptionBudget/headrace-pool",
        "NetworkPolicy/headrace-default-deny",
        "NetworkPolicy/headrace-dns",
        *(f"NetworkPolicy/headrace-{role}" for role in ROLES),
    ):
        assert want in kinds
    assert sorted(f"{d['kind']}/{d['metadata']['name']}" for d in peer_policies()) == [
        "NetworkPolicy/kafka-from-headrace",
        "NetworkPolicy/postgres-from-headrace",
    ]
    assert [d["kind"] for d in load(SCALEDOBJECT)] == ["ScaledObject"]
    assert [d["kind"] for d in load(HPA)] == ["HorizontalPodAutoscaler"]


def test_kustomization_lists_every_core_manifest_and_no_autoscaler() -> None:
    listed = load(KUSTOMIZATION)[0]["resources"]
    on_disk = sorted(p.name for p in K8S.glob("*.y*ml") if p != KUSTOMIZATION)
    assert sorted(listed) == on_disk
    assert len(set(listed)) == len(listed)
    # Both autoscalers at once would fight over the invoker's replica count.
    assert not any(name.startswith(("keda", "hpa")) for name in listed)


def test_every_namespaced_object_is_in_the_namespace() -> None:
    (ns,) = by_kind(core_docs(), "Namespace")
    name = ns["metadata"]["name"]
    assert load(KUSTOMIZATION)[0]["namespace"] == name
    for path, doc in all_docs():
        if path.is_relative_to(PEERS):  # applied in PostgreSQL's and Kafka's namespaces
            assert doc["metadata"].get("namespace") not in (None, name), doc_id(path, doc)
        elif doc["kind"] not in ("Namespace", "CustomResourceDefinition", "Kustomization"):
            assert doc["metadata"].get("namespace") == name, doc_id(path, doc)


def test_every_document_has_a_validator() -> None:
    """keda.sh objects are checked against the one CRD shipped (ScaledObject), everything else but the
    kustomization against Kubernetes' schemas (test_kubernetes_schema): a document of another kind fails here."""
    for path, doc in all_docs():
        assert "apiVersion" in doc and "kind" in doc, doc_id(path, doc)
        if is_keda(doc):
            assert doc["kind"] == crd_doc()["spec"]["names"]["kind"], doc_id(path, doc)
            assert path == SCALEDOBJECT, doc_id(path, doc)


# --- tests: schemas --------------------------------------------------------------------------------------


@pytest.mark.parametrize("version", K8S_VERSIONS)
@pytest.mark.parametrize(("path", "doc"), kubernetes_docs(), ids=[doc_id(p, d) for p, d in kubernetes_docs()])
def test_kubernetes_schema(path: Path, doc: Doc, version: str) -> None:
    used = kubernetes_validate.validate(doc, version, strict=True)
    assert used == version


def test_the_crd_is_kedas_own_file_unmodified() -> None:
    text = CRD.read_text()
    header, sep, body = text.partition("\n---\n")
    assert sep, "no document separator after the header"
    assert f"KEDA version: {KEDA_VERSION}" in header
    stated = re.findall(r"sha256 ([0-9a-f]{64}) for the part below", header)
    assert stated == [hashlib.sha256((sep[1:] + body).encode()).hexdigest()]
    crd = crd_doc()
    assert crd["metadata"]["name"] == "scaledobjects.keda.sh"
    assert crd["spec"]["names"]["kind"] == "ScaledObject"


def test_scaledobject_matches_the_keda_crd() -> None:
    assert crd_problems(scaledobject()) == []


def test_kubernetes_validate_does_not_know_keda() -> None:
    """Why the ScaledObject needs the CRD: kubernetes-validate has no schema for it."""
    with pytest.raises(kubernetes_validate.SchemaNotFoundError):
        kubernetes_validate.validate(scaledobject(), K8S_VERSIONS[-1], strict=True)


# --- tests: what no schema sees --------------------------------------------------------------------------


def test_workloads_run_headrace_roles() -> None:
    assert check_roles(core_docs()) == []


#: click's UsageError, whichever click typer uses (recent typers carry a copy of their own).
USAGE_ERROR = next(c for c in typer.BadParameter.__mro__ if c.__name__ == "UsageError")


def cli_command(role: str) -> Any:
    command = typer.main.get_command(headrace_cli).commands.get(role)  # type: ignore[attr-defined]
    assert command is not None, f"`headrace {role}` is not a command of the headrace CLI"
    return command


def parse_role_args(role: str, args: list[str]) -> None:
    """Parse `headrace ROLE ARGS` as the CLI would (unknown options, missing values, bad types raise);
    $(VAR) references, which the kubelet expands from the container's env, stand in as they are."""
    cli_command(role).make_context(role, list(args))


@pytest.mark.parametrize("role", ROLES)
def test_role_arguments_parse_with_the_cli(role: str) -> None:
    workload = workload_for(core_docs(), role)
    assert workload is not None
    parse_role_args(role, pod_spec(workload)["containers"][0]["args"][1:])


def test_cli_rejects_an_unknown_pool_option() -> None:
    pool = workload_for(core_docs(), "pool")
    assert pool is not None
    with pytest.raises(USAGE_ERROR, match="no-such-option"):
        parse_role_args("pool", [*pod_spec(pool)["containers"][0]["args"][1:], "--no-such-option"])


def test_services_select_workloads_and_ports() -> None:
    assert check_services(core_docs()) == []


def test_disruption_budgets() -> None:
    assert check_pdbs(core_docs()) == []


def test_environment_names_are_read_by_config_py() -> None:
    known = config_names()
    assert {"HEADRACE_DB", "HEADRACE_KAFKA", "HEADRACE_ADMIN_KEY", "HEADRACE_DATA", "HEADRACE_LOG_LEVEL"} <= known
    assert check_env(core_docs(), known) == []


def test_secret_is_referenced_not_inlined() -> None:
    assert check_secret(core_docs()) == []


def test_security_context_and_resources() -> None:
    assert check_security(core_docs(), image_uid()) == []


def test_probes() -> None:
    assert check_probes(core_docs()) == []


def test_invoker_pods_hold_no_admin_key() -> None:
    """Issue 10: a function must find no admin key in its pod. The invoker holds only the database URL
    (it claims and records activations and mints their macaroons there), and no Secret volume."""
    invoker = workload_for(core_docs(), "invoker")
    assert invoker is not None
    refs = [
        e["valueFrom"]["secretKeyRef"]["key"]
        for c in containers(invoker)
        for e in c.get("env", [])
        if "secretKeyRef" in e.get("valueFrom", {})
    ]
    assert refs == ["db-url"]
    assert not [v for v in pod_spec(invoker).get("volumes", []) if "secret" in v or "projected" in v]


def test_invoker_sandbox_prerequisites() -> None:
    assert check_sandbox(core_docs()) == []


def sandboxed(uid: int, script: str, *, masked_proc: bool) -> subprocess.CompletedProcess[str]:
    """Run `script` in a bubblewrap sandbox (own user, mount, PID, IPC, UTS and network namespaces, a fresh
    /proc) as the unprivileged `uid`, through an unprivileged user namespace as in the invoker pods (bwrap
    not setuid, no capability). With `masked_proc`, first overmount part of /proc read-only in a private mount
    namespace, as container runtimes do unless the pod asks for `procMount: Unmasked`."""
    bwrap = [
        *("setpriv", f"--reuid={uid}", f"--regid={uid}", "--clear-groups"),
        *("bwrap", "--unshare-all", "--die-with-parent", "--ro-bind", "/usr", "/usr"),
        *(
            arg
            for d in ("lib", "lib64", "bin")
            if Path(f"/{d}").is_symlink()
            for arg in ("--symlink", f"usr/{d}", f"/{d}")
        ),
        *("--dev", "/dev", "--proc", "/proc", "sh", "-c", script),
    ]
    mask = 'mount --bind /proc/sys /proc/sys && mount -o remount,bind,ro /proc/sys && exec "$@"'
    argv = ["unshare", "-m", "--propagation", "private", "sh", "-c", mask, "sh", *bwrap] if masked_proc else bwrap
    return subprocess.run(argv, capture_output=True, text=True, timeout=60, check=False)


def test_bubblewrap_runs_unprivileged_and_needs_an_unmasked_proc() -> None:
    """What invoker.yaml relies on, done on this host: non-setuid bubblewrap, as the image's unprivileged
    uid with no capability, makes its namespaces through an unprivileged user namespace; the sandbox sees
    only its own processes and no network interface but its own loopback. Under a /proc with a read-only
    overmount (what runtimes do to a container's /proc) the fresh /proc is refused: hence procMount Unmasked.
    (Setting up the overmount needs root, as this suite runs.)"""
    assert shutil.which("bwrap"), "bubblewrap is not installed (scripts/install-test-deps.sh installs it)"
    assert os.geteuid() == 0, "this test makes a mount namespace with a masked /proc, which needs root"
    assert os.stat(shutil.which("bwrap") or "").st_mode & 0o4000 == 0, "bwrap is setuid here, unlike the image"
    uid = image_uid()
    script = "id -u; echo --; cat /proc/[0-9]*/comm; echo --; tail -n +3 /proc/net/dev | cut -d: -f1 | tr -d ' '"
    run = sandboxed(uid, script, masked_proc=False)
    assert run.returncode == 0, run.stderr
    out_uid, processes, interfaces = (part.split() for part in run.stdout.split("--"))
    assert out_uid == [str(uid)]
    assert set(processes) <= {"bwrap", "sh", "cat"}, processes  # its own processes only, nothing of the host
    assert interfaces == ["lo"]
    masked = sandboxed(uid, "true", masked_proc=True)
    assert masked.returncode != 0
    assert "Can't mount proc" in masked.stderr, masked.stderr
    assert check_sandbox(core_docs()) == []  # and the invoker pod asks for it


def test_network_policies() -> None:
    assert check_network(core_docs()) == []


def test_peer_policies_for_postgres_and_kafka() -> None:
    assert check_peers(core_docs(), peer_policies()) == []


def test_pool_storage() -> None:
    assert check_pool_storage(core_docs()) == []


def test_invoker_worker_cap_fits_the_pod() -> None:
    assert check_invoker_workers(core_docs()) == []


def test_scaledobject_semantics() -> None:
    assert check_scaledobject(core_docs(), scaledobject()) == []


def test_hpa_semantics() -> None:
    assert check_hpa(core_docs(), hpa()) == []
    assert "cannot scale to zero" in HPA.read_text()


def test_containerfile() -> None:
    text = CONTAINERFILE.read_text()
    assert re.findall(r"^FROM\s+(\S+)", text, re.M)[-1] == "python:3.11-slim"
    # numpy and h5py for functions, and the back-ends the manifests configure: PostgreSQL and Kafka
    installed = re.search(r'pip install "\.\[([a-z,]+)\]"', text)
    assert installed and {"science", "postgresql", "kafka"} <= set(installed.group(1).split(","))
    assert image_uid() != 0
    assert re.search(r'^ENTRYPOINT \["headrace"\]$', text, re.M)
    # The invokers' sandbox: bubblewrap in the image that runs (the last stage), not setuid.
    final = text.split("\nFROM ")[-1]
    assert re.search(r"apt-get install .*\bbubblewrap\b", final), "bubblewrap is not installed in the final image"
    assert "chmod u-s /usr/bin/bwrap" in final
    db_url = named(core_docs(), "Secret", "headrace-secrets")["stringData"]["db-url"]  # type: ignore[index]
    if db_url.startswith(("postgresql://", "postgresql+psycopg://")):
        extra = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["optional-dependencies"]["postgresql"]
        assert any(d.startswith("psycopg") for d in extra), "no PostgreSQL driver"
    ignored = [line.strip() for line in DOCKERIGNORE.read_text().splitlines() if not line.startswith("#")]
    assert {".venv", ".git", "**/__pycache__"} <= set(ignored)
    assert not {"src", "pyproject.toml", "README.md"} & set(ignored)


# --- negative tests: broken copies are rejected ----------------------------------------------------------


def broken(doc: Doc, change: Callable[[Doc], None]) -> Doc:
    out = copy.deepcopy(doc)
    change(out)
    return out


def door_deployment() -> Doc:
    door = named(core_docs(), "Deployment", "headrace-door")
    assert door is not None
    return door


@pytest.mark.parametrize("version", K8S_VERSIONS)
@pytest.mark.parametrize(
    ("change", "expected"),
    [
        pytest.param(lambda d: d["spec"].update(replicas="two"), "'two' is not of type 'integer'", id="replicas-two"),
        pytest.param(
            lambda d: pod_spec(d)["containers"][0].update(imagePullPolcy="Always"),
            "('imagePullPolcy' was unexpected)",
            id="misspelt-field",
        ),
        pytest.param(
            lambda d: pod_spec(d)["containers"][0].pop("name"), "'name' is a required", id="container-without-name"
        ),
        pytest.param(
            lambda d: pod_spec(d)["containers"][0]["ports"][0].update(containerPort="2880"),
            "'2880' is not of type 'integer'",
            id="port-as-string",
        ),
    ],
)
def test_kubernetes_schema_rejects(change: Callable[[Doc], None], expected: str, version: str) -> None:
    with pytest.raises(kubernetes_validate.ValidationError) as caught:
        kubernetes_validate.validate(broken(door_deployment(), change), version, strict=True)
    assert expected in caught.value.message


def trigger_meta(so: Doc) -> dict[str, Any]:
    meta: dict[str, Any] = so["spec"]["triggers"][0]["metadata"]
    return meta


@pytest.mark.parametrize(
    ("change", "expected"),
    [
        pytest.param(lambda s: trigger_meta(s).update(lagThreshold=50), "is not of type 'string'", id="lag-int"),
        pytest.param(lambda s: s["spec"].update(maxReplicas=12), "Additional properties", id="unknown-field"),
        pytest.param(lambda s: s["spec"].update(minReplicaCount=-1), "less than the minimum", id="min-negative"),
        pytest.param(lambda s: s["spec"].update(pollingInterval=2**31), "greater than the maximum", id="int32"),
        pytest.param(lambda s: s["spec"].update(triggers=[]), "should be non-empty", id="no-trigger"),
        pytest.param(lambda s: s["spec"]["triggers"][0].pop("type"), "'type' is a required", id="no-type"),
        pytest.param(lambda s: s["spec"].update(minReplicaCount=13), "less than or equal to max", id="cel-min-max"),
        pytest.param(lambda s: s.update(apiVersion="keda.sh/v1"), "not served", id="api-version"),
    ],
)
def test_keda_crd_rejects(change: Callable[[Doc], None], expected: str) -> None:
    problems = crd_problems(broken(scaledobject(), change))
    assert any(expected in p for p in problems), problems


def mutate_docs(kind: str, name: str, change: Callable[[Doc], None]) -> list[Doc]:
    docs = copy.deepcopy(core_docs())
    target = named(docs, kind, name)
    assert target is not None
    change(target)
    return docs


def set_env(container: Doc, name: str, value: str) -> None:
    """Set `name` to a literal value, replacing whatever the container had for it."""
    container["env"] = [e for e in container.get("env", []) if e["name"] != name] + [{"name": name, "value": value}]


def container0(kind: str, name: str, change: Callable[[Doc], None]) -> list[Doc]:
    return mutate_docs(kind, name, lambda d: change(pod_spec(d)["containers"][0]))


@pytest.mark.parametrize(
    ("docs", "check", "expected"),
    [
        pytest.param(
            lambda: container0("Deployment", "headrace-door", lambda c: c.update(args=["webdav"])),
            check_roles,
            "no role",
            id="unknown-role",
        ),
        pytest.param(
            lambda: mutate_docs("Deployment", "headrace-controller", lambda d: d["spec"].update(replicas=2)),
            check_roles,
            "controller runs more",
            id="two-controllers",
        ),
        pytest.param(
            lambda: container0("Deployment", "headrace-door", lambda c: c.update(args=["door", "--api", "http://x"])),
            check_roles,
            "--api",
            id="door-api-url",
        ),
        pytest.param(
            lambda: mutate_docs(
                "Service",
                "headrace-door",
                lambda d: d["spec"]["selector"].update({"app.kubernetes.io/component": "doors"}),
            ),
            check_services,
            "matches 0 workloads",
            id="service-selector",
        ),
        pytest.param(
            lambda: mutate_docs(
                "Service", "headrace-frontend", lambda d: d["spec"]["ports"][0].update(targetPort="api")
            ),
            check_services,
            "targetPort",
            id="service-target-port",
        ),
        pytest.param(
            lambda: mutate_docs("Service", "headrace-pool", lambda d: d["spec"].pop("clusterIP")),
            check_services,
            "headless",
            id="pool-service-not-headless",
        ),
        pytest.param(
            lambda: mutate_docs("PodDisruptionBudget", "headrace-door", lambda d: d["spec"].update(maxUnavailable=0)),
            check_pdbs,
            "no node can be drained",
            id="pdb-blocks-drain",
        ),
        pytest.param(
            lambda: mutate_docs("ConfigMap", "headrace-config", lambda d: d["data"].update(HEADRACE_DATABASE="x")),
            lambda docs: check_env(docs, config_names()),
            "HEADRACE_DATABASE",
            id="unknown-env-name",
        ),
        pytest.param(
            lambda: container0(
                "Deployment",
                "headrace-invoker",
                lambda c: c["env"].append({"name": "HEADRACE_ACTIVATION_XYZ", "value": "1"}),
            ),
            lambda docs: check_env(docs, config_names()),
            "HEADRACE_ACTIVATION_XYZ",
            id="unknown-env-in-container",
        ),
        pytest.param(
            lambda: container0("Deployment", "headrace-controller", lambda c: set_env(c, "POD_NAME", "x")),
            lambda docs: check_env(docs, config_names()),
            "POD_NAME",
            id="non-headrace-literal-env",
        ),
        pytest.param(
            lambda: container0("StatefulSet", "headrace-pool", lambda c: c.pop("livenessProbe")),
            check_probes,
            "pool: livenessProbe",
            id="pool-without-liveness",
        ),
        pytest.param(
            lambda: container0("StatefulSet", "headrace-pool", lambda c: c["args"].__setitem__(2, "/srv/pool")),
            check_pool_storage,
            "not on a mounted volume claim",
            id="pool-data-off-volume",
        ),
        pytest.param(
            lambda: container0(
                "Deployment",
                "headrace-invoker",
                lambda c: set_env(c, "HEADRACE_DB", "postgresql://u:p@h/db"),
            ),
            check_secret,
            "inlined",
            id="secret-inlined-in-env",
        ),
        pytest.param(
            lambda: mutate_docs("ConfigMap", "headrace-config", lambda d: d["data"].update(HEADRACE_ADMIN_KEY="k")),
            check_secret,
            "inlines HEADRACE_ADMIN_KEY",
            id="secret-in-configmap",
        ),
        pytest.param(
            lambda: mutate_docs(
                "Secret", "headrace-secrets", lambda d: d["stringData"].update({"admin-key": "hunter2"})
            ),
            check_secret,
            "placeholder",
            id="secret-not-placeholder",
        ),
        pytest.param(
            lambda: mutate_docs("Deployment", "headrace-frontend", lambda d: pod_spec(d).pop("enableServiceLinks")),
            lambda docs: check_security(docs, image_uid()),
            "service links",
            id="service-links",
        ),
        pytest.param(
            lambda: mutate_docs(
                "Deployment", "headrace-invoker", lambda d: pod_spec(d)["securityContext"].update(runAsUser=0)
            ),
            lambda docs: check_security(docs, image_uid()),
            "non-root",
            id="root",
        ),
        pytest.param(
            lambda: container0(
                "Deployment", "headrace-door", lambda c: c["securityContext"].pop("readOnlyRootFilesystem")
            ),
            lambda docs: check_security(docs, image_uid()),
            "writable",
            id="writable-root",
        ),
        pytest.param(
            lambda: container0("Deployment", "headrace-door", lambda c: c["volumeMounts"].pop()),
            lambda docs: check_security(docs, image_uid()),
            "/tmp is not a volume",
            id="no-tmp",
        ),
        pytest.param(
            lambda: container0(
                "Deployment", "headrace-frontend", lambda c: c["readinessProbe"]["httpGet"].update(path="/")
            ),
            check_probes,
            "readinessProbe is not GET /healthz",
            id="probe-path",
        ),
        pytest.param(
            lambda: container0(
                "Deployment",
                "headrace-invoker",
                lambda c: c.update(livenessProbe={"httpGet": {"path": "/healthz", "port": 3880}}),
            ),
            check_probes,
            "does not run",
            id="invoker-http-probe",
        ),
        pytest.param(
            lambda: mutate_docs("StatefulSet", "headrace-pool", lambda d: d["spec"].pop("volumeClaimTemplates")),
            check_pool_storage,
            "no volumeClaimTemplates",
            id="pool-without-volume",
        ),
        pytest.param(
            lambda: container0("Deployment", "headrace-invoker", lambda c: set_env(c, "HEADRACE_FN_MAX_WORKERS", "16")),
            check_invoker_workers,
            "exceed the memory limit",
            id="too-many-workers",
        ),
    ],
)
def test_semantic_checks_reject(
    docs: Callable[[], list[Doc]], check: Callable[[list[Doc]], list[str]], expected: str
) -> None:
    problems = check(docs())
    assert any(expected in p for p in problems), problems


@pytest.mark.parametrize(
    ("change", "expected"),
    [
        pytest.param(lambda s: s["spec"].update(maxReplicaCount=13), "not the partition count", id="above-partitions"),
        pytest.param(lambda s: s["spec"].update(minReplicaCount=1), "not 0", id="no-scale-to-zero"),
        pytest.param(lambda s: s["spec"]["scaleTargetRef"].update(name="headrace-door"), "scaleTargetRef", id="target"),
        pytest.param(lambda s: trigger_meta(s).update(topic="headrace-events"), "topic", id="topic"),
        pytest.param(lambda s: trigger_meta(s).update(consumerGroup="invokers"), "consumerGroup", id="group"),
        pytest.param(lambda s: trigger_meta(s).update(bootstrapServers="kafka:9092"), "bootstrapServers", id="kafka"),
        pytest.param(lambda s: trigger_meta(s).update(lagThreshold="0"), "lagThreshold", id="lag-zero"),
        pytest.param(lambda s: trigger_meta(s).update(lagThreshold="fifty"), "lagThreshold", id="lag-word"),
        pytest.param(
            lambda s: trigger_meta(s).update(allowIdleConsumers="true"), "both true", id="idle-and-limit-to-lag"
        ),
        pytest.param(lambda s: s["spec"].pop("advanced"), "behavior", id="no-behavior"),
        pytest.param(lambda s: trigger_meta(s).update(offsetResetPolicy="latest"), "offsetResetPolicy", id="latest"),
    ],
)
def test_scaledobject_checks_reject(change: Callable[[Doc], None], expected: str) -> None:
    problems = check_scaledobject(core_docs(), broken(scaledobject(), change))
    assert any(expected in p for p in problems), problems


def test_scaledobject_check_rejects_local_activations() -> None:
    docs = mutate_docs("ConfigMap", "headrace-config", lambda d: d["data"].update(HEADRACE_ACTIVATIONS="local"))
    assert any("never get an activation" in p for p in check_scaledobject(docs, scaledobject()))


def test_scaledobject_check_rejects_fixed_invoker_replicas() -> None:
    docs = mutate_docs("Deployment", "headrace-invoker", lambda d: d["spec"].update(replicas=3))
    assert any("sets replicas" in p for p in check_scaledobject(docs, scaledobject()))


def test_scaledobject_check_follows_the_partition_count() -> None:
    docs = mutate_docs("ConfigMap", "headrace-config", lambda d: d["data"].update(HEADRACE_ACTIVATION_PARTITIONS="6"))
    assert any("partition count 6" in p for p in check_scaledobject(docs, scaledobject()))
    assert any("exceeds the partition count 6" in p for p in check_hpa(docs, hpa()))


@pytest.mark.parametrize(
    ("change", "expected"),
    [
        pytest.param(lambda h: h["spec"].update(minReplicas=0), "minReplicas below 1", id="zero"),
        pytest.param(lambda h: h["spec"].update(maxReplicas=13), "exceeds", id="above-partitions"),
        pytest.param(lambda h: h["spec"]["scaleTargetRef"].update(name="headrace-pool"), "scaleTargetRef", id="target"),
        pytest.param(lambda h: h["spec"].update(metrics=[]), "CPU", id="no-cpu"),
    ],
)
def test_hpa_checks_reject(change: Callable[[Doc], None], expected: str) -> None:
    problems = check_hpa(core_docs(), broken(hpa(), change))
    assert any(expected in p for p in problems), problems


# --- negative tests of issue 10: each puts back what a function could use --------------------------------


def add_admin_key(container: Doc, name: str = "HEADRACE_ADMIN_KEY") -> None:
    ref = {"secretKeyRef": {"name": "headrace-secrets", "key": "admin-key"}}
    container["env"].append({"name": name, "valueFrom": ref})


def policy(docs: list[Doc], name: str) -> Doc:
    found = named(docs, "NetworkPolicy", name)
    assert found is not None
    return found


def mutate_policy(name: str, change: Callable[[Doc], None]) -> list[Doc]:
    return mutate_docs("NetworkPolicy", name, lambda d: change(d["spec"]))


def pod_peer(role: str) -> Doc:
    return {"podSelector": {"matchLabels": {"app.kubernetes.io/name": "headrace", COMPONENT: role}}}


@pytest.mark.parametrize(
    ("docs", "check", "expected"),
    [
        pytest.param(
            lambda: container0("Deployment", "headrace-invoker", add_admin_key),
            check_secret,
            "role invoker must not hold it",
            id="admin-key-in-invoker",
        ),
        pytest.param(
            lambda: container0("Deployment", "headrace-invoker", lambda c: add_admin_key(c, "HEADRACE_LOG_LEVEL")),
            check_secret,
            "holds the Secret's admin-key as HEADRACE_LOG_LEVEL",
            id="admin-key-in-invoker-renamed",
        ),
        pytest.param(
            lambda: mutate_docs(
                "Deployment",
                "headrace-invoker",
                lambda d: pod_spec(d)["volumes"].append({"name": "s", "secret": {"secretName": "headrace-secrets"}}),
            ),
            check_secret,
            "mounts a Secret",
            id="secret-volume-in-invoker",
        ),
        pytest.param(
            lambda: mutate_docs("Deployment", "headrace-invoker", lambda d: pod_spec(d).pop("hostUsers")),
            check_sandbox,
            "hostUsers is not false",
            id="invoker-node-uids",
        ),
        pytest.param(
            lambda: container0("Deployment", "headrace-invoker", lambda c: set_env(c, "HEADRACE_SANDBOX", "none")),
            check_sandbox,
            "functions would run unsandboxed",
            id="invoker-unsandboxed",
        ),
        pytest.param(
            lambda: mutate_docs("ConfigMap", "headrace-config", lambda d: d["data"].update(HEADRACE_SANDBOX="none")),
            check_sandbox,
            "functions would run unsandboxed",
            id="configmap-unsandboxed",
        ),
        pytest.param(
            lambda: container0("Deployment", "headrace-invoker", lambda c: c["securityContext"].pop("procMount")),
            check_sandbox,
            "procMount is not Unmasked",
            id="invoker-masked-proc",
        ),
        pytest.param(
            lambda: mutate_docs(
                "Namespace",
                "headrace",
                lambda d: d["metadata"]["labels"].update({"pod-security.kubernetes.io/enforce": "restricted"}),
            ),
            check_sandbox,
            "does not admit the invoker",
            id="namespace-refuses-invoker",
        ),
        pytest.param(
            lambda: container0(
                "Deployment",
                "headrace-door",
                lambda c: c["securityContext"].update(seccompProfile={"type": "Unconfined"}),
            ),
            lambda docs: check_security(docs, image_uid()),
            "is not RuntimeDefault",
            id="door-unconfined",
        ),
        pytest.param(
            lambda: container0(
                "Deployment",
                "headrace-invoker",
                lambda c: c["securityContext"]["capabilities"].update(add=["SYS_ADMIN"]),
            ),
            lambda docs: check_security(docs, image_uid()),
            "adds capabilities",
            id="invoker-sys-admin",
        ),
        pytest.param(
            lambda: mutate_docs("Deployment", "headrace-invoker", lambda d: pod_spec(d).update(hostNetwork=True)),
            lambda docs: check_security(docs, image_uid()),
            "hostNetwork",
            id="invoker-host-network",
        ),
        pytest.param(
            lambda: [d for d in core_docs() if d["metadata"]["name"] != "headrace-default-deny"],
            check_network,
            "no default-deny",
            id="no-default-deny",
        ),
        pytest.param(
            lambda: mutate_policy(
                "headrace-invoker", lambda s: s["egress"].append({"to": [pod_peer("pool")], "ports": [{"port": 2881}]})
            ),
            check_network,
            "invoker: reaches pool on port 2881",
            id="invoker-to-pool",
        ),
        pytest.param(
            lambda: mutate_policy("headrace-invoker", lambda s: s["egress"].append({"ports": [{"port": 443}]})),
            check_network,
            "invoker: reaches any on port 443",
            id="invoker-to-anywhere",
        ),
        pytest.param(
            lambda: mutate_policy(
                "headrace-invoker",
                lambda s: s["egress"].append({"to": [{"ipBlock": {"cidr": "0.0.0.0/0"}}]}),
            ),
            check_network,
            "invoker: reaches ip:0.0.0.0/0 on port any",
            id="invoker-ipblock",
        ),
        pytest.param(
            lambda: mutate_policy("headrace-invoker", lambda s: s.update(ingress=[{"ports": [{"port": 8080}]}])),
            check_network,
            "invoker: accepts any on port 8080",
            id="invoker-ingress",
        ),
        pytest.param(
            lambda: mutate_policy("headrace-pool", lambda s: s["ingress"][0]["from"].append(pod_peer("invoker"))),
            check_network,
            "pool: accepts invoker on port 2881",
            id="pool-from-invoker",
        ),
        pytest.param(
            lambda: mutate_policy("headrace-pool", lambda s: s["ingress"][0].pop("from")),
            check_network,
            "pool: accepts any on port 2881",
            id="pool-from-anyone",
        ),
        pytest.param(
            lambda: mutate_policy(
                "headrace-door",
                lambda s: s["egress"].append(policy(core_docs(), "headrace-controller")["spec"]["egress"][1]),
            ),
            check_network,
            "door: reaches kafka on port 9092",
            id="door-to-kafka",
        ),
        pytest.param(
            lambda: mutate_policy("headrace-invoker", lambda s: s["policyTypes"].remove("Egress")),
            check_network,
            "invoker: cannot reach kafka",
            id="invoker-egress-dropped",
        ),
        pytest.param(
            lambda: mutate_docs(
                "ConfigMap", "headrace-config", lambda d: d["data"].update(HEADRACE_KAFKA="kafka.example.org:9092")
            ),
            check_network,
            "kafka is outside the cluster",
            id="kafka-outside",
        ),
        pytest.param(
            lambda: mutate_docs("ConfigMap", "headrace-config", lambda d: d["data"].update(HEADRACE_DOOR_REDIRECT="1")),
            check_network,
            "HEADRACE_DOOR_REDIRECT",
            id="redirect-to-closed-pools",
        ),
    ],
)
def test_issue10_checks_reject(
    docs: Callable[[], list[Doc]], check: Callable[[list[Doc]], list[str]], expected: str
) -> None:
    problems = check(docs())
    assert any(expected in p for p in problems), problems


def test_peer_check_rejects_a_role_that_does_not_need_the_database_or_kafka() -> None:
    peers = copy.deepcopy(peer_policies())
    kafka = next(p for p in peers if p["metadata"]["name"] == "kafka-from-headrace")
    kafka["spec"]["ingress"][0]["from"][0]["podSelector"]["matchExpressions"][1]["values"].append("door")
    assert any("accepts roles" in p for p in check_peers(core_docs(), peers))
    kafka["spec"]["ingress"][0]["from"][0]["podSelector"].pop("matchExpressions")
    assert any("not narrowed" in p for p in check_peers(core_docs(), peers))
    kafka["spec"]["ingress"].append({"ports": [{"port": 9092}]})
    assert any("outside namespace headrace: {}" in p for p in check_peers(core_docs(), peers))
