#!/usr/bin/env python3
# SPDX-License-Identifier: MIT
"""Networking end to end (docs/networking.md) with the real guest image, QEMU
(TCG) and passt, through `schedulerctl run --embedded`. Prints TAP.

Traffic stays on this machine: test servers listen on 127.0.0.1 or inside a
network namespace this test creates (a veth pair with 198.18.x.0/30, RFC 2544
benchmark space, routed only to that namespace). Every wait is bounded.

  - no network: the guest has no NIC at all
  - full: the guest reaches the namespace's server; exposed ports are reported
  - expose: a guest HTTP server answers on the reported 127.0.0.1 URL (fixed
    and OS-assigned ports); the guest cannot reach the server full mode reached
  - allow: DNS answers only allowed names; HTTPS to an allowed name (checked
    against a test CA) works, a blocked SNI, an allowed SNI to another
    address, and plain TCP to the allowed name's address on another port fail;
    HTTP by Host header with --allow-http
  - the helper killed mid-run: the run fails with a clear error and nothing of
    the VM is left (processes, run directory, cgroup)
  - bad network input is refused before anything runs
"""
import http.server
import json
import os
import shutil
import signal
import socket
import ssl
import subprocess
import sys
import tempfile
import threading
import time

n = 0
failed = 0


def ok(cond, desc, *diag):
    global n, failed
    n += 1
    print(("ok %d - %s" if cond else "not ok %d - %s") % (n, desc))
    if not cond:
        failed += 1
        for d in diag:
            for line in str(d).splitlines()[-40:]:
                print("# " + line)
    sys.stdout.flush()
    return cond


def skip_all(reason):
    print("1..0 # SKIP " + reason)
    sys.exit(0)


b = os.environ.get("top_builddir", ".")
ctl = os.path.join(b, "schedulerctl")
guest = os.environ.get("SBX_GUEST_DIR", "")
if not os.path.isfile(os.path.join(guest, "vmlinux")):
    skip_all("no guest image in SBX_GUEST_DIR (make guest-image)")
if os.geteuid() != 0:
    skip_all("needs root (network namespaces for the isolated modes and the test server)")
for tool in ("passt", "nsenter", "ip", "openssl"):
    if shutil.which(tool) is None:
        skip_all(tool + " not installed (ci/deps.sh installs it)")

work = tempfile.mkdtemp(prefix="sbx-net-test.")
rt = os.path.join(work, "run")
conf = os.path.join(work, "schedulerd.conf")
with open(conf, "w") as f:
    f.write("[scheduler]\nruntime_dir=%s\naccel=tcg\n" % rt)

pid = os.getpid()
ns = "sbxnt-%d" % pid
veth_h, veth_n = "sbxh%d" % (pid % 100000), "sbxn%d" % (pid % 100000)
net3 = 20 + pid % 200
host_ip, ns_ip = "198.18.%d.1" % net3, "198.18.%d.2" % net3
children = []


def cleanup():
    for p in children:
        if p.poll() is None:
            p.kill()
            p.wait()
    subprocess.run(["ip", "netns", "del", ns], stderr=subprocess.DEVNULL)
    subprocess.run(["ip", "link", "del", veth_h], stderr=subprocess.DEVNULL)
    shutil.rmtree(work, ignore_errors=True)


def sh(*cmd):
    subprocess.run(cmd, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)


try:
    sh("ip", "netns", "add", ns)
    sh("ip", "link", "add", veth_h, "type", "veth", "peer", "name", veth_n, "netns", ns)
    sh("ip", "addr", "add", host_ip + "/30", "dev", veth_h)
    sh("ip", "link", "set", veth_h, "up")
    sh("ip", "-n", ns, "addr", "add", ns_ip + "/30", "dev", veth_n)
    sh("ip", "-n", ns, "link", "set", veth_n, "up")
    sh("ip", "-n", ns, "link", "set", "lo", "up")
except subprocess.CalledProcessError as e:
    cleanup()
    skip_all("cannot create a veth pair into a test namespace: %s" % e.stderr.decode().strip())

# The namespace's server: "netns-ok" for any GET on ns_ip:8080 (and :443, a
# TLS-less port an SNI could be pointed at).
ns_server = subprocess.Popen(
    ["ip", "netns", "exec", ns, sys.executable, "-c", """
import http.server, threading
class H(http.server.BaseHTTPRequestHandler):
    def do_GET(self):
        self.send_response(200); self.send_header("Content-Length", "8"); self.end_headers()
        self.wfile.write(b"netns-ok")
    def log_message(self, *a): pass
for port in (443, 8080):
    s = http.server.ThreadingHTTPServer(("%s", port), H)
    threading.Thread(target=s.serve_forever, daemon=True).start()
print("up", flush=True)
threading.Event().wait()
""" % ns_ip], stdout=subprocess.PIPE)
children.append(ns_server)
ns_server.stdout.readline()

# Test CA and a certificate for allowed.sbx.test, made with openssl.
tls = os.path.join(work, "tls")
os.mkdir(tls)


def openssl(*args):
    subprocess.run(("openssl",) + args, cwd=tls, check=True, stdout=subprocess.DEVNULL,
                   stderr=subprocess.DEVNULL)


openssl("req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", "ca.key", "-out", "ca.pem",
        "-days", "2", "-subj", "/CN=sbx net test CA", "-addext",
        "basicConstraints=critical,CA:TRUE", "-addext", "keyUsage=critical,keyCertSign")
openssl("req", "-newkey", "rsa:2048", "-nodes", "-keyout", "srv.key", "-out", "srv.csr", "-subj",
        "/CN=allowed.sbx.test")
with open(os.path.join(tls, "ext.cnf"), "w") as f:
    f.write("subjectAltName=DNS:allowed.sbx.test,DNS:api.allowed.sbx.test\n"
            "basicConstraints=CA:FALSE\nextendedKeyUsage=serverAuth\n")
openssl("x509", "-req", "-in", "srv.csr", "-CA", "ca.pem", "-CAkey", "ca.key", "-CAcreateserial",
        "-out", "srv.pem", "-days", "2", "-extfile", "ext.cnf")
ca_pem = open(os.path.join(tls, "ca.pem")).read()


class Echo(http.server.BaseHTTPRequestHandler):
    tag = b""

    def do_GET(self):
        body = self.tag + b" " + self.headers.get("Host", "").encode()
        self.send_response(200)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *a):
        pass


class TlsEcho(Echo):
    tag = b"tls-ok"


class PlainEcho(Echo):
    tag = b"http-ok"


https_srv = http.server.ThreadingHTTPServer(("127.0.0.1", 0), TlsEcho)
sctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
sctx.load_cert_chain(os.path.join(tls, "srv.pem"), os.path.join(tls, "srv.key"))
https_srv.socket = sctx.wrap_socket(https_srv.socket, server_side=True)
http_srv = http.server.ThreadingHTTPServer(("127.0.0.1", 0), PlainEcho)
for s in (https_srv, http_srv):
    threading.Thread(target=s.serve_forever, daemon=True).start()

env = dict(os.environ)
env.update({
    "SBX_GUEST_DIR": guest,
    "SCHEDULERD_WARM_POOL": "0",
    "SCHEDULERD_L1": "off",
    # the proxy's own resolution of the allowed name, pointed at our servers
    "SBX_NET_RESOLVE": "allowed.sbx.test:443=127.0.0.1:{0};api.allowed.sbx.test:443=127.0.0.1:{0};"
                       "allowed.sbx.test:80=127.0.0.1:{1}".format(https_srv.server_address[1],
                                                                  http_srv.server_address[1]),
})
env.pop("SCHEDULERCTL_VERBOSE", None)


def ctl_args(*args):
    return [ctl, "run", "--embedded", "--config", conf, "--timeout", "120"] + list(args)


def run_json(code, *args):
    p = subprocess.run(ctl_args("--json", *args, "-c", code), env=env, capture_output=True,
                       text=True, timeout=600)
    try:
        return p.returncode, json.loads(p.stdout), p.stderr
    except ValueError:
        return p.returncode, {}, p.stdout + p.stderr


def free_port():
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    return port


def vm_leftovers(ctl_pid):
    """Run directories, processes and cgroups of @ctl_pid's VMs still present."""
    left = []
    vms = os.path.join(rt, "vms")
    if os.path.isdir(vms):
        left += ["dir " + d for d in os.listdir(vms) if d.startswith("vm-%d-" % ctl_pid)]
    for p in os.listdir("/proc"):
        if not p.isdigit():
            continue
        try:
            cmd = open("/proc/%s/cmdline" % p, "rb").read().replace(b"\0", b" ").decode()
        except OSError:
            continue
        if ("vm-%d-" % ctl_pid) in cmd:
            left.append("process %s: %s" % (p, cmd[:100]))
    for root, dirs, _ in os.walk("/sys/fs/cgroup"):
        for d in dirs:
            if d.startswith("vm-%d-" % ctl_pid):
                left.append("cgroup " + os.path.join(root, d))
        if root.count("/") > 6:
            dirs[:] = []
    return left


print("1..23")
try:
    # ---- input validation (nothing boots) -----------------------------------
    rc, res, err = run_json("print(1)", "--allow-domain", "*.example.com")
    ok(rc != 0 and res.get("error", {}).get("name") == "InvalidInput"
       and "wildcard" in res["error"]["message"],
       "a wildcard allow-list entry is refused as InvalidInput", rc, res, err)
    rc, res, err = run_json("print(1)", *sum([["--expose", str(8000 + i)] for i in range(11)], []))
    ok(rc != 0 and res.get("error", {}).get("name") == "InvalidInput",
       "11 exposed ports are refused as InvalidInput", rc, res, err)

    # ---- no network: no NIC ---------------------------------------------------
    rc, res, err = run_json("import os; print(sorted(os.listdir('/sys/class/net')))")
    ok(rc == 0 and res.get("stdout", "").strip() == "['lo']",
       "default: the guest has no NIC (only lo)", rc, res, err)
    ok(res.get("timing", {}).get("network_ms", -1) == 0 and res.get("exposed_ports") == [],
       "default: no network start-up, no exposed ports", res)

    # ---- full egress --------------------------------------------------------
    code = ("import urllib.request\n"
            "print(urllib.request.urlopen('http://%s:8080/', timeout=20).read().decode())\n" % ns_ip)
    rc, res, err = run_json(code, "--network", "full", "--expose", "8000")
    ok(rc == 0 and res.get("stdout", "").strip() == "netns-ok",
       "full: the guest reaches a server in the test's namespace", rc, res, err)
    ports = res.get("exposed_ports", [])
    ok(len(ports) == 1 and ports[0]["internal"] == 8000 and ports[0]["external"] > 0
       and ports[0]["url"] == "http://127.0.0.1:%d" % ports[0]["external"],
       "full: the exposed port is reported with an OS-assigned 127.0.0.1 URL", ports)
    t = res.get("timing", {})
    ok(t.get("network_ms", 0) > 0, "full: the helper's start-up time is reported", t)
    if t:
        print("# full: network_ms=%s setup_ms=%s boot_ms=%s (helper share of setup+boot %.1f%%)"
              % (t.get("network_ms"), t.get("setup_ms"), t.get("boot_ms"),
                 100.0 * t.get("network_ms", 0) / max(1, t.get("setup_ms", 0) + t.get("boot_ms", 0))))

    # ---- expose only ----------------------------------------------------------
    fixed = free_port()
    code = """
import http.server, os, socket
s = socket.socket(); s.settimeout(5)
print("egress", "blocked" if s.connect_ex(("%s", 8080)) != 0 else "OPEN", flush=True)
os.chdir("/tmp"); open("/tmp/hi.txt", "w").write("guest-ok")
srv = http.server.HTTPServer(("0.0.0.0", 8000), http.server.SimpleHTTPRequestHandler)
srv.timeout = 90
while True:
    srv.handle_request()
    if os.path.exists("/tmp/served"):
        break
""" % ns_ip
    # the guest serves until it has answered one full GET of /hi.txt
    code = code.replace("SimpleHTTPRequestHandler)",
                        "SimpleHTTPRequestHandler)\n"
                        "orig = http.server.SimpleHTTPRequestHandler.do_GET\n"
                        "def do_GET(self):\n"
                        "    orig(self); open('/tmp/served', 'w').close()\n"
                        "http.server.SimpleHTTPRequestHandler.do_GET = do_GET")
    proc = subprocess.Popen(ctl_args("--json", "--expose", "8000:%d" % fixed, "--expose", "8001",
                                     "-c", code), env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)
    children.append(proc)
    body = None
    for _ in range(240):  # bounded: the guest boots under TCG
        if proc.poll() is not None:
            break
        try:
            c = socket.create_connection(("127.0.0.1", fixed), timeout=5)
            c.sendall(b"GET /hi.txt HTTP/1.0\r\n\r\n")
            c.settimeout(10)
            data = b""
            while True:
                chunk = c.recv(4096)
                if not chunk:
                    break
                data += chunk
            c.close()
            if data.startswith(b"HTTP/1.0 200"):
                body = data.split(b"\r\n\r\n", 1)[1].decode()
                break
        except OSError:
            pass
        time.sleep(0.5)
    out, err = proc.communicate(timeout=300)
    ok(body == "guest-ok", "expose: the guest's HTTP server answers on 127.0.0.1:%d" % fixed,
       body, err)
    res = json.loads(out) if out.strip().startswith("{") else {}
    ok(proc.returncode == 0 and "egress blocked" in res.get("stdout", ""),
       "expose: the guest cannot connect to the server full mode reached", proc.returncode, out,
       err)
    ports = sorted(res.get("exposed_ports", []), key=lambda p: p["internal"])
    ok(len(ports) == 2 and ports[0] == {"internal": 8000, "external": fixed,
                                        "url": "http://127.0.0.1:%d" % fixed}
       and ports[1]["internal"] == 8001 and ports[1]["external"] not in (0, fixed),
       "expose: fixed and OS-assigned external ports are reported", ports)

    # ---- allow-listed egress -------------------------------------------------
    code = '''
import socket, ssl, urllib.request
CA = """%s"""
ctx = ssl.create_default_context(cadata=CA)
def dns(name):
    try:
        return socket.gethostbyname(name)
    except OSError as e:
        return "fail"
def tls(ip, port, sni):
    try:
        s = socket.create_connection((ip, port), timeout=8)
        t = ctx.wrap_socket(s, server_hostname=sni)
        t.sendall(b"GET / HTTP/1.0\\r\\nHost: " + sni.encode() + b"\\r\\n\\r\\n")
        return t.recv(200).decode(errors="replace").split("\\r\\n")[0]
    except Exception as e:
        return "fail"
def tcp(ip, port):
    s = socket.socket(); s.settimeout(5)
    return "open" if s.connect_ex((ip, port)) == 0 else "fail"
def get(url):
    try:
        return urllib.request.urlopen(url, context=ctx if url.startswith("https") else None,
                                      timeout=10).read().decode()
    except Exception as e:
        return "fail"
r = {}
r["dns_allowed"] = dns("allowed.sbx.test")
r["dns_sub"] = dns("api.allowed.sbx.test")
r["dns_blocked"] = dns("blocked.sbx.test")
r["https_allowed"] = get("https://allowed.sbx.test/")
r["https_sub"] = get("https://api.allowed.sbx.test/")
r["http_allowed"] = get("http://allowed.sbx.test/")
r["sni_blocked_via_gw"] = tls(r["dns_allowed"], 443, "blocked.sbx.test")
r["sni_allowed_other_ip"] = tls("%s", 443, "allowed.sbx.test")
r["tcp_allowed_ip_other_port"] = tcp(r["dns_allowed"], 8080)
r["tcp_by_ip"] = tcp("%s", 8080)
import json; print(json.dumps(r))
''' % (ca_pem, ns_ip, ns_ip)
    rc, res, err = run_json(code, "--allow-domain", "allowed.sbx.test", "--allow-http")
    try:
        r = json.loads(res.get("stdout", "").strip().splitlines()[-1])
    except (ValueError, IndexError):
        r = {}
    diag = (rc, res, err)
    ok(r.get("dns_allowed") == "192.0.2.1" and r.get("dns_sub") == "192.0.2.1",
       "allow: DNS answers an allowed name and its subdomain (with the gateway)", r, *diag)
    ok(r.get("dns_blocked") == "fail", "allow: a blocked name fails at DNS", r)
    ok(r.get("https_allowed") == "tls-ok allowed.sbx.test",
       "allow: HTTPS to the allowed name works and verifies against the test CA", r)
    ok(r.get("https_sub") == "tls-ok api.allowed.sbx.test",
       "allow: HTTPS to a subdomain of the allowed name works", r)
    ok(r.get("http_allowed") == "http-ok allowed.sbx.test",
       "allow: plain HTTP by Host header with --allow-http", r)
    ok(r.get("sni_blocked_via_gw") == "fail", "allow: a blocked SNI through the gateway fails", r)
    ok(r.get("sni_allowed_other_ip") == "fail",
       "allow: an allowed SNI to an address we did not resolve fails", r)
    ok(r.get("tcp_allowed_ip_other_port") == "fail",
       "allow: plain TCP to the allowed name's address on another port fails", r)
    ok(r.get("tcp_by_ip") == "fail",
       "allow: a blocked destination fails by IP (the server full mode reached)", r)

    # ---- the helper dies mid-run ---------------------------------------------
    proc = subprocess.Popen(ctl_args("--expose", "8000", "-c",
                                     "import time\nprint('READY', flush=True)\ntime.sleep(100)"),
                            env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    children.append(proc)
    line = proc.stdout.readline()  # bounded by the run's own timeout
    helper = None
    for p in os.listdir("/proc"):
        try:
            st = open("/proc/%s/stat" % p).read()
        except OSError:
            continue
        fields = st[st.rfind(")") + 2:].split()
        # passt re-executes itself as passt.avx2 where the CPU has AVX2
        if (st[st.find("(") + 1:st.rfind(")")].startswith("passt")
                and int(fields[1]) == proc.pid):
            helper = int(p)
    if helper:
        os.kill(helper, signal.SIGKILL)
    try:
        out, err = proc.communicate(timeout=180)
    except subprocess.TimeoutExpired:
        proc.kill()
        out, err = proc.communicate()
    ok(line.strip() == "READY" and helper is not None,
       "helper killed: the run was running and its passt was found", line, helper)
    ok(proc.returncode == 125 and "network helper passt" in err and "signal 9" in err,
       "helper killed: the run fails with a clear error", proc.returncode, err)
    left = vm_leftovers(proc.pid)
    ok(left == [], "helper killed: no process, run directory or cgroup of the VM is left", *left)
    ok(vm_leftovers(os.getpid()) == [] and not any(
        d.startswith("vm-") for d in os.listdir(os.path.join(rt, "vms"))),
       "no VM of any run is left in the runtime directory", os.listdir(os.path.join(rt, "vms")))
finally:
    https_srv.shutdown()
    http_srv.shutdown()
    cleanup()
sys.exit(1 if failed else 0)
