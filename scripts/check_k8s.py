#!/usr/bin/env python3
"""Offline checks of tessera's Helm chart (run by scripts/check_k8s.sh, which installs the tools).

For the chart's default values and each values-*.yaml beside it:
  - `helm lint --strict`;
  - `helm template` at each pinned Kubernetes version (1.29 and the newest kubernetes-validate
    bundles), every rendered object validated strictly (unknown fields, wrong types) against that
    version's schema with kubernetes_validate's Python API. A kind with no schema fails, except
    LeaderWorkerSet, which is checked against deploy/k8s/schemas/leaderworkerset-v1.json (the
    fields the chart uses, with the API's enums), and whose leaderTemplate and workerTemplate are
    each validated strictly as a core v1 PodTemplate;
  - what the chart promises operators (worker args and GPU requests, probes, /dev/shm, grace
    period over the drain timeout), checked on the rendered objects.
Renders that must fail (bad configuration) are checked to fail with their message.
Prints one line per failure and closes with "k8s checks: N passed, M failed"; exits 1 if M > 0.
"""
import argparse
import functools
import glob
import json
import os
import subprocess
import sys

import jsonschema
import kubernetes_validate
import yaml

# kubernetes_validate reads and parses a version's _definitions.json (megabytes) for every object;
# the schemas are only read, so parse each file once.
kubernetes_validate.utils.schema_contents = functools.lru_cache(maxsize=None)(
    kubernetes_validate.utils.schema_contents)

PINNED = ["1.29.0"]  # plus kubernetes_validate.latest_version()
LWS_API = "leaderworkerset.x-k8s.io/v1"


class Checks:
    def __init__(self, verbose, quiet=False):
        self.passed = 0
        self.failed = 0
        self.verbose = verbose
        self.quiet = quiet
        self.failures = []

    def ok(self, what):
        self.passed += 1
        if self.verbose:
            print(f"ok    {what}")

    def fail(self, what, why):
        self.failed += 1
        why = str(why).strip().replace("\n", "\n        ")
        self.failures.append(f"{what}: {why}")
        if not self.quiet:
            print(f"FAIL  {what}: {why}")

    def expect(self, cond, what, why=""):
        if cond:
            self.ok(what)
        else:
            self.fail(what, why or "not so")


def helm(args, helm_bin):
    p = subprocess.run([helm_bin] + args, capture_output=True, text=True)
    return p.returncode, p.stdout, p.stderr


def kv_error(e):
    """One readable line for a kubernetes_validate / jsonschema error."""
    if isinstance(e, kubernetes_validate.SchemaNotFoundError):
        return e.message
    if isinstance(e, jsonschema.ValidationError):
        path = ".".join(str(p) for p in e.absolute_path) or "(top)"
        return f"{path}: {e.message}"
    return f"{type(e).__name__}: {e}"


def name_of(doc):
    return f"{doc.get('kind')}/{(doc.get('metadata') or {}).get('name')}"


def validate_k8s(checks, doc, version, where):
    try:
        kubernetes_validate.validate(doc, version, strict=True)
        checks.ok(f"{where}: {name_of(doc)} valid for {version}")
    except Exception as e:  # SchemaNotFoundError, ValidationError, VersionNotSupportedError
        checks.fail(f"{where}: {name_of(doc)} against Kubernetes {version}", kv_error(e))


def validate_lws(checks, doc, version, lws_schema, where):
    v = jsonschema.Draft202012Validator(lws_schema)
    errs = sorted(v.iter_errors(doc), key=lambda e: list(e.absolute_path))
    if errs:
        checks.fail(f"{where}: {name_of(doc)} against {os.path.basename(LWS_SCHEMA_PATH)}",
                    "; ".join(kv_error(e) for e in errs))
    else:
        checks.ok(f"{where}: {name_of(doc)} matches the LeaderWorkerSet schema")
    lwt = ((doc.get("spec") or {}).get("leaderWorkerTemplate") or {})
    for key in ("leaderTemplate", "workerTemplate"):
        tmpl = lwt.get(key)
        if tmpl is None:
            continue
        wrapped = {"apiVersion": "v1", "kind": "PodTemplate",
                   "metadata": {"name": f"{doc['metadata']['name']}-{key.lower()}"},
                   "template": tmpl}
        try:
            kubernetes_validate.validate(wrapped, version, strict=True)
            checks.ok(f"{where}: {name_of(doc)} {key} valid as a PodTemplate for {version}")
        except Exception as e:
            checks.fail(f"{where}: {name_of(doc)} {key} as a PodTemplate for {version}",
                        kv_error(e))


def pod_specs(doc):
    """(label, pod template) of every pod template in an object."""
    kind = doc.get("kind")
    spec = doc.get("spec") or {}
    if kind in ("Deployment", "StatefulSet"):
        return [(kind, spec.get("template") or {})]
    if kind == "LeaderWorkerSet":
        lwt = spec.get("leaderWorkerTemplate") or {}
        return [(k, lwt[k]) for k in ("leaderTemplate", "workerTemplate") if k in lwt]
    return []


def arg_after(args, flag):
    return args[args.index(flag) + 1] if flag in args and args.index(flag) + 1 < len(args) else None


def check_semantics(checks, docs, values, where):
    """What the chart promises, on the rendered objects."""
    tp, pp = int(values.get("tp", 1)), int(values.get("pp", 1))
    device = values.get("device", "cpu")
    mode = (values.get("workers") or {}).get("mode", "statefulset")
    kinds = [d["kind"] for d in docs]
    external = bool(((values.get("etcd") or {}).get("external") or {}).get("endpoints"))
    etcd_sts = [d for d in docs if d["kind"] == "StatefulSet" and d["metadata"]["name"].endswith("-etcd")]
    checks.expect(len(etcd_sts) == (0 if external else 1), f"{where}: etcd StatefulSet iff no external etcd",
                  f"{len(etcd_sts)} etcd StatefulSets, external={external}")
    checks.expect(("LeaderWorkerSet" in kinds) == (mode == "leaderworkerset"),
                  f"{where}: LeaderWorkerSet iff workers.mode=leaderworkerset", f"kinds {kinds}")
    for d in docs:
        if d["kind"] == "Deployment":
            pod = d["spec"]["template"]["spec"]
            c = pod["containers"][0]
            drain = int(arg_after(c["args"], "--drain-timeout") or -1)
            grace = pod.get("terminationGracePeriodSeconds", 30)
            checks.expect(grace > drain >= 0, f"{where}: coordinator grace {grace}s > drain {drain}s")
            checks.expect("grpc" in (c.get("readinessProbe") or {}),
                          f"{where}: coordinator readiness is a gRPC health probe")
            checks.expect(c.get("livenessProbe") is not None, f"{where}: coordinator has a liveness probe")
        for label, tmpl in pod_specs(d):
            if not d["metadata"]["name"].endswith("-worker"):
                continue
            pod = tmpl["spec"]
            c = pod["containers"][0]
            args = c["args"]
            what = f"{where}: worker {label}"
            drain = int(arg_after(args, "--drain-timeout") or -1)
            grace = pod.get("terminationGracePeriodSeconds", 30)
            checks.expect(grace > drain >= 0, f"{what}: grace {grace}s > drain {drain}s")
            checks.expect(args[0] == "worker" and arg_after(args, "--tp") == str(tp)
                          and arg_after(args, "--pp") == str(pp)
                          and arg_after(args, "--device") == device
                          and arg_after(args, "--advertise-address") == "$(POD_IP)"
                          and arg_after(args, "--id") == "$(POD_NAME)",
                          f"{what} args", " ".join(args))
            if d["kind"] == "LeaderWorkerSet":
                checks.expect(arg_after(args, "--group-rank") == "$(LWS_WORKER_INDEX)"
                              and arg_after(args, "--group-size") == "$(LWS_GROUP_SIZE)"
                              and arg_after(args, "--group") == "$(LWS_LEADER_ADDRESS)",
                              f"{what} group flags from LWS", " ".join(args))
            gpus = ((c.get("resources") or {}).get("limits") or {}).get("nvidia.com/gpu")
            want = (1 if d["kind"] == "LeaderWorkerSet" else tp * pp) if device == "cuda" else None
            checks.expect(gpus == want, f"{what} nvidia.com/gpu = {want}", f"got {gpus}")
            shm = [v for v in pod.get("volumes", []) if (v.get("emptyDir") or {}).get("medium") == "Memory"]
            mounts = [m for m in c.get("volumeMounts", []) if m.get("mountPath") == "/dev/shm"]
            checks.expect(len(shm) == 1 and len(mounts) == 1 and mounts[0]["name"] == shm[0]["name"],
                          f"{what} /dev/shm is a memory emptyDir")
            if label == "workerTemplate":  # ranks 1.. of a LeaderWorkerSet group: they serve nothing
                checks.expect(not any(c.get(k) for k in ("ports", "readinessProbe", "livenessProbe", "startupProbe")),
                              f"{what} (a following rank) has no port or probes", str(sorted(c)))
            else:
                checks.expect((c.get("readinessProbe") or {}).get("grpc", {}).get("port") == int(arg_after(args, "--port")),
                              f"{what} readiness is a gRPC health probe on its port")
        if d["kind"] == "LeaderWorkerSet":
            lwt = d["spec"]["leaderWorkerTemplate"]
            checks.expect(lwt.get("size") == tp * pp, f"{where}: LWS size = tp*pp = {tp * pp}",
                          f"got {lwt.get('size')}")
    checks.expect(any(d["kind"] == "PodDisruptionBudget" and d["metadata"]["name"].endswith("-worker")
                      for d in docs), f"{where}: workers have a PodDisruptionBudget")


def merged_values(chart, values_file):
    base = yaml.safe_load(open(os.path.join(chart, "values.yaml"))) or {}

    def merge(a, b):
        for k, v in b.items():
            if isinstance(v, dict) and isinstance(a.get(k), dict):
                merge(a[k], v)
            else:
                a[k] = v
        return a
    if values_file:
        merge(base, yaml.safe_load(open(values_file)) or {})
    return base


# Renders that must fail, with a fragment of the error they must give.
MUST_FAIL = [
    (["--set", "workers.mode=leaderworkerset", "--set", "device=cpu"], "needs device=cuda"),
    (["--set", "tp=0"], "tp"),
    (["--set", "device=gpu"], "device"),
    (["--set", "coordinator.drainTimeoutSeconds=60", "--set", "coordinator.terminationGracePeriodSeconds=30"],
     "must exceed"),
    (["--set", "workers.drainTimeoutSeconds=60"], "kills a worker mid-drain"),
    (["--set", "model.hostPath=/m", "--set", "model.existingClaim=c"], "not both"),
    (["--set", "workers.replica=2"], "replica"),  # a misspelled value is refused, not ignored
    (["--set", "workers.leaderWorkerSet.restartPolicy=RecreateGroupOnRestart"], "restartPolicy"),
]

LWS_SCHEMA_PATH = ""


def run_chart(checks, helm_bin, chart, value_sets, versions, lws_schema, must_fail):
    for vf in value_sets:
        where = os.path.basename(vf) if vf else "values.yaml"
        vargs = ["-f", vf] if vf else []
        rc, out, err = helm(["lint", "--strict", chart] + vargs, helm_bin)
        if rc == 0:
            checks.ok(f"{where}: helm lint --strict")
        else:
            checks.fail(f"{where}: helm lint --strict", (out + err)[-2000:])
        values = merged_values(chart, vf)
        for ver in versions:
            w = f"{where}@{ver}"
            rc, out, err = helm(["template", "tessera", chart, "--namespace", "tessera",
                                 "--kube-version", ver] + vargs, helm_bin)
            if rc != 0:
                checks.fail(f"{w}: helm template", err[-2000:])
                continue
            try:
                docs = [d for d in yaml.safe_load_all(out) if d]
            except yaml.YAMLError as e:
                checks.fail(f"{w}: rendered YAML", e)
                continue
            checks.expect(len(docs) > 0, f"{w}: helm template rendered {len(docs)} objects")
            for d in docs:
                if not isinstance(d, dict) or "kind" not in d or "apiVersion" not in d:
                    checks.fail(f"{w}: object", f"no kind/apiVersion: {str(d)[:200]}")
                elif d["kind"] == "LeaderWorkerSet" and d["apiVersion"] == LWS_API:
                    validate_lws(checks, d, ver, lws_schema, w)
                else:
                    validate_k8s(checks, d, ver, w)
            if ver == versions[-1]:
                try:
                    check_semantics(checks, docs, values, where)
                except (KeyError, IndexError, TypeError, ValueError) as e:
                    checks.fail(f"{where}: chart semantics", f"{type(e).__name__}: {e}")

    if must_fail:
        for extra, needle in MUST_FAIL:
            what = f"bad values {' '.join(x for x in extra if x != '--set')} refused"
            rc, out, err = helm(["template", "tessera", chart] + extra, helm_bin)
            checks.expect(rc != 0 and needle in err, what,
                          f"rc={rc}, expected an error mentioning {needle!r}: {err.strip()[-300:]}")


# Deliberately broken charts the checks must reject: (what, values file, edits, error fragment).
# An edit is (template file, old text, new text); old None adds the file.
BROKEN = [
    ("a misspelled pod-spec field (StatefulSet)", "values-cpu.yaml",
     [("templates/_worker.tpl", "  terminationGracePeriodSeconds:", "  terminationGracePeriodSecond:")],
     "terminationGracePeriodSecond"),
    ("a misspelled pod-spec field (LWS leaderTemplate, as a PodTemplate)", "values-gpu-multinode.yaml",
     [("templates/_worker.tpl", "  terminationGracePeriodSeconds:", "  terminationGracePeriodSecond:")],
     "PodTemplate"),
    ("a wrong type (containerPort as a string)", "values-gpu.yaml",
     [("templates/_worker.tpl", "containerPort: {{ $port }}", "containerPort: {{ $port | quote }}")],
     "containerPort"),
    ("an unknown kind", "values-cpu.yaml",
     [("templates/extra.yaml", None, "apiVersion: example.com/v1\nkind: Widget\nmetadata:\n  name: w\n")],
     "Couldn't find schema for kind Widget"),
    ("a misspelled kind", "values-cpu.yaml",
     [("templates/extra.yaml", None, "apiVersion: policy/v1\nkind: PodDisruptionBuget\nmetadata:\n  name: w\n")],
     "PodDisruptionBuget"),
    ("a bad LWS restartPolicy", "values-gpu-multinode.yaml",
     [("templates/workers.yaml", "restartPolicy: {{ $w.leaderWorkerSet.restartPolicy }}",
       "restartPolicy: RecreateGroupOnRestart")],
     "RecreateGroupOnRestart"),
    ("an LWS field the schema does not know", "values-gpu-multinode.yaml",
     [("templates/workers.yaml", "  startupPolicy:", "  startPolicy:")],
     "startPolicy"),
]


def self_test(checks, helm_bin, chart, versions, lws_schema):
    """Each broken copy of the chart must fail, for the reason planted."""
    import shutil
    import tempfile
    for what, vfile, edits, needle in BROKEN:
        with tempfile.TemporaryDirectory(prefix="check_k8s.") as tmp:
            broken = os.path.join(tmp, "tessera")
            shutil.copytree(chart, broken)
            try:
                for path, old, new in edits:
                    full = os.path.join(broken, path)
                    if old is None:
                        text = new
                    else:
                        text = open(full).read()
                        if old not in text:
                            raise ValueError(f"{path} has no {old!r}: update BROKEN in check_k8s.py")
                        text = text.replace(old, new)
                    open(full, "w").write(text)
            except ValueError as e:
                checks.fail(f"self-test: {what}", e)
                continue
            sub = Checks(verbose=False, quiet=True)
            run_chart(sub, helm_bin, broken, [os.path.join(broken, vfile)], versions, lws_schema, False)
            hit = [f for f in sub.failures if needle in f]
            checks.expect(sub.failed > 0 and hit, f"self-test: {what} is caught",
                          f"{sub.failed} failures, none mentioning {needle!r}: {sub.failures[:3]}")
            if hit and checks.verbose:
                print(f"      caught: {hit[0][:300]}")


def main():
    global LWS_SCHEMA_PATH
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--helm", required=True)
    ap.add_argument("--chart", required=True)
    ap.add_argument("--lws-schema", required=True)
    ap.add_argument("--values", action="append",
                    help="values files to check (default: none, i.e. values.yaml alone, and each values-*.yaml)")
    ap.add_argument("--no-must-fail", action="store_true", help="skip the renders that must fail")
    ap.add_argument("--no-self-test", action="store_true",
                    help="skip the deliberately broken charts that must fail")
    ap.add_argument("-v", "--verbose", action="store_true")
    a = ap.parse_args()
    LWS_SCHEMA_PATH = a.lws_schema
    checks = Checks(a.verbose)
    lws_schema = json.load(open(a.lws_schema))
    jsonschema.Draft202012Validator.check_schema(lws_schema)
    versions = PINNED + [kubernetes_validate.latest_version()]
    print(f"check_k8s: chart {a.chart}; Kubernetes schemas {', '.join(versions)} "
          f"(kubernetes-validate {kubernetes_validate.version.__version__})")

    value_sets = a.values if a.values else [None] + sorted(glob.glob(os.path.join(a.chart, "values-*.yaml")))
    run_chart(checks, a.helm, a.chart, value_sets, versions, lws_schema, not a.no_must_fail)
    if not a.no_self_test:
        self_test(checks, a.helm, a.chart, versions, lws_schema)

    print(f"k8s checks: {checks.passed} passed, {checks.failed} failed")
    return 1 if checks.failed else 0


if __name__ == "__main__":
    sys.exit(main())
