"""The official OpenWhisk JavaScript client (npm `openwhisk`) against a real `headrace up` (issue 17).

The client's own integration suite (apache/openwhisk-client-js `test/integration`, run with ava) is not in
the npm tarball (it ships lib/ only) and this test vendors nothing from the repository, so the suite itself
cannot run here. What runs instead is the client library from the tarball (`npm pack openwhisk`, installed
in a temporary directory) driving the same calls as that suite's package, action, trigger/rule and
activation tests with python:3 actions: packages.create/get/list/delete, a binding, actions.create inside a
package and invoke by package-qualified name, namespaces.list, triggers/rules create and fire, counts.
Skipped without node/npm or without the npm registry.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import tarfile
from pathlib import Path

import pytest

from harness import Server

SCRIPT = r"""
const openwhisk = require(process.env.OW_CLIENT);
const ow = openwhisk({apihost: process.env.OW_HOST, api_key: process.env.OW_KEY, ignore_certs: true});
const code = "def main(args):\n    return {'who': args.get('who'), 'greeting': args.get('greeting')}\n";
const out = {};
(async () => {
  out.namespaces = await ow.namespaces.list();
  await ow.packages.create({name: 'jspkg', package: {parameters: [{key: 'greeting', value: 'hi'}], publish: true}});
  await ow.actions.create({name: 'jspkg/hello', action: code, kind: 'python:3'});
  out.invoked = await ow.actions.invoke({name: 'jspkg/hello', blocking: true, result: true, params: {who: 'js'}});
  out.qualified = await ow.actions.invoke({name: '/_/jspkg/hello', blocking: true, result: true});
  const pkg = await ow.packages.get({name: 'jspkg'});
  out.pkgActions = pkg.actions.map(a => a.name);
  await ow.packages.create({name: 'jsbound', package: {binding: {namespace: '_', name: 'jspkg'},
                                                       parameters: [{key: 'greeting', value: 'bound'}]}});
  out.bound = await ow.actions.invoke({name: 'jsbound/hello', blocking: true, result: true});
  out.packages = (await ow.packages.list()).map(p => p.name).sort();
  await ow.triggers.create({name: 'jstrig'});
  await ow.rules.create({name: 'jsrule', action: '/_/jspkg/hello', trigger: 'jstrig'});
  out.fired = await ow.triggers.invoke({name: 'jstrig', params: {who: 'rule'}});
  out.count = await ow.actions.list({count: true});
  await ow.rules.delete({name: 'jsrule'});
  await ow.triggers.delete({name: 'jstrig'});
  try { await ow.packages.delete({name: 'jspkg'}); out.deleteFull = 'deleted'; }
  catch (e) { out.deleteFull = e.statusCode; }
  await ow.packages.delete({name: 'jsbound'});
  await ow.actions.delete({name: 'jspkg/hello'});
  await ow.packages.delete({name: 'jspkg'});
  out.after = (await ow.packages.list()).length;
  console.log(JSON.stringify(out));
})().catch(e => { console.error(e.message || e); process.exit(1); });
"""


@pytest.fixture(scope="module")
def client_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    if shutil.which("node") is None or shutil.which("npm") is None:
        pytest.skip("node and npm are needed (apt-get install nodejs npm)")
    base = tmp_path_factory.mktemp("owjs")
    packed = subprocess.run(["npm", "pack", "openwhisk", "--silent"], cwd=base, capture_output=True, text=True)
    if packed.returncode != 0:
        pytest.skip(f"npm pack openwhisk failed (no registry?): {packed.stderr.strip()[:200]}")
    with tarfile.open(base / packed.stdout.strip().splitlines()[-1]) as tar:
        tar.extractall(base, filter="data")
    root = base / "package"
    subprocess.run(
        ["npm", "install", "--omit=dev", "--no-audit", "--no-fund"], cwd=root, check=True, capture_output=True
    )
    return root


def test_openwhisk_js_client_packages(server: Server, client_dir: Path, tmp_path: Path) -> None:
    script = tmp_path / "run.js"
    script.write_text(SCRIPT)
    user, key = server.auth
    env = {
        "PATH": "/usr/bin:/bin",
        "OW_CLIENT": str(client_dir),
        "OW_HOST": server.api_url,
        "OW_KEY": f"{user}:{key}",
    }
    done = subprocess.run(["node", str(script)], env=env, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    out = json.loads(done.stdout.strip().splitlines()[-1])
    assert out["namespaces"] == [user]
    assert out["invoked"] == {"who": "js", "greeting": "hi"}
    assert out["qualified"]["greeting"] == "hi"
    assert out["pkgActions"] == ["hello"]
    assert out["bound"]["greeting"] == "bound"
    assert out["packages"] == ["jsbound", "jspkg"]
    assert "activationId" in out["fired"]
    assert out["count"] == {"actions": 1}
    assert out["deleteFull"] == 409
    assert out["after"] == 0
