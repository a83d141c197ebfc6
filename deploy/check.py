"""deploy/check.sh's checks (see there). Run from the repository root."""
import os
import re
import shutil
import subprocess
import sys
import tempfile

import yaml

failures = []


def check(ok, what):
    if not ok:
        failures.append(what)
    return ok


docs = {}
for f in sorted(os.listdir("deploy")):
    if f.endswith(".yaml"):
        for d in yaml.safe_load_all(open(os.path.join("deploy", f))):
            if d:
                key = (d["kind"], d["metadata"]["name"])
                check(key not in docs, f"{key} defined twice")
                docs[key] = d

readme = open("README.md").read()
dockerfile = open("Dockerfile").read()

# --- the bridge: a StatefulSet --------------------------------------------------------------
check(not any(k == "Deployment" and n == "twilio-realtime" for k, n in docs), "the bridge is still a Deployment")
sts = docs[("StatefulSet", "twilio-realtime")]
name = sts["metadata"]["name"]
spec = sts["spec"]
pod = spec["template"]
labels = pod["metadata"]["labels"]
check(spec["selector"]["matchLabels"].items() <= labels.items(), "StatefulSet selector does not match its pods")
(c,) = pod["spec"]["containers"]
ports = {p["name"]: p["containerPort"] for p in c["ports"]}
env = {e["name"]: e for e in c["env"]}

table = set(re.findall(r"^\| `([A-Z_]+)`(?:, `([A-Z_]+)`)? \|", readme, re.M))
table = {n for pair in table for n in pair if n}
for n in env:
    check(n in table, f"env {n} is not in README's env table")
check(env.get("INSTANCE_ID", {}).get("valueFrom", {}).get("fieldRef", {}).get("fieldPath") == "metadata.name",
      "INSTANCE_ID must come from the pod name (fieldRef metadata.name)")
check(int(env["PORT"]["value"]) == ports["http"], "PORT != containerPort http")
check(int(env["ADMIN_PORT"]["value"]) == ports["admin"], "ADMIN_PORT != containerPort admin")
check(env["BIND_ADDR"]["value"] == "0.0.0.0", "BIND_ADDR must be 0.0.0.0 in a pod")
check("TWILIO_AUTH_TOKEN" in env and "MAX_CALLS" in env, "the manifests are meant to run with stream tokens and MAX_CALLS")
public = env["PUBLIC_URL"]["value"]
check(public.startswith("https://"), "PUBLIC_URL must be https://")
public_host = public[len("https://"):].rstrip("/")

for probe, path in (("livenessProbe", "/healthz"), ("readinessProbe", "/readyz")):
    g = c[probe]["httpGet"]
    check(g["path"] == path and g["port"] == "admin", f"{probe} must be GET {path} on the admin port")
    check(f"`{path}`" in readme, f"README does not mention {path}")
ann = pod["metadata"]["annotations"]
check(int(ann["prometheus.io/port"]) == ports["admin"], "prometheus.io/port != admin port")
check(pod["spec"]["terminationGracePeriodSeconds"] > int(env["DRAIN_TIMEOUT_SECS"]["value"]),
      "terminationGracePeriodSeconds must be longer than DRAIN_TIMEOUT_SECS")
uid = re.search(r"useradd .*--uid (\d+)", dockerfile).group(1)
check(pod["spec"]["securityContext"].get("runAsNonRoot") is True, "runAsNonRoot")
check(str(pod["spec"]["securityContext"].get("runAsUser")) == uid, "runAsUser != the Dockerfile's user")
check(re.search(rf"^USER {uid}$", dockerfile, re.M) is not None, "Dockerfile does not run as its user")
check(re.search(r"^STOPSIGNAL SIGTERM$", dockerfile, re.M) is not None, "Dockerfile must STOPSIGNAL SIGTERM (a drain)")
check(re.search(rf"^EXPOSE {ports['http']}$", dockerfile, re.M) is not None, "Dockerfile EXPOSE != http port")


# --- Services ---------------------------------------------------------------------------------
def selects(svc, pod_labels):
    return svc["spec"]["selector"].items() <= pod_labels.items()


def svc_port(svc, pod_ports):
    (p,) = svc["spec"]["ports"]
    t = p["targetPort"]
    check(t in pod_ports if isinstance(t, str) else t in pod_ports.values(),
          f"Service {svc['metadata']['name']} targets port {t}, not a container port")
    return p["port"]


headless_name = spec["serviceName"]
headless = docs.get(("Service", headless_name))
check(headless is not None, f"no Service {headless_name} (the StatefulSet's serviceName)")
check(headless["spec"].get("clusterIP") == "None", f"{headless_name} must be headless (clusterIP: None)")
check(headless["spec"].get("publishNotReadyAddresses") is True,
      f"{headless_name} must publish not-ready pods (a draining or full pod still takes its streams)")
check(selects(headless, labels), f"{headless_name} does not select the StatefulSet's pods")
headless_port = svc_port(headless, ports)
check(headless_port == ports["http"], "the headless Service's port must be the pods' http port (DNS names the pod)")
web = docs[("Service", name)]
check(selects(web, labels), "Service twilio-realtime does not select the pods")
web_port = svc_port(web, ports)
admin = docs[("Service", f"{name}-admin")]
check(selects(admin, labels), "the admin Service does not select the pods")
check(admin["spec"]["ports"][0]["targetPort"] == "admin", "the admin Service must target the admin port")

# --- HPA ----------------------------------------------------------------------------------------
(hpa,) = [d for (k, _), d in docs.items() if k == "HorizontalPodAutoscaler"]
ref = hpa["spec"]["scaleTargetRef"]
check((ref["kind"], ref["name"]) == ("StatefulSet", name), "the HPA must target the StatefulSet")
(m,) = hpa["spec"]["metrics"]
metric = m["pods"]["metric"]["name"]
check(metric.startswith("twilio_realtime_") and f"`{metric[len('twilio_realtime_'):]}`" in readme,
      f"HPA metric {metric} is not in README's metrics list")
check(float(m["pods"]["target"]["averageValue"]) < int(env["MAX_CALLS"]["value"]), "HPA target must be below MAX_CALLS")
check(hpa["spec"]["minReplicas"] >= 2, "minReplicas")

# --- the router ------------------------------------------------------------------------------------
router = docs[("Deployment", f"{name}-router")]
rpod = router["spec"]["template"]
(rc,) = rpod["spec"]["containers"]
rports = {p["name"]: p["containerPort"] for p in rc["ports"]}
rsvc = docs[("Service", f"{name}-router")]
check(selects(rsvc, rpod["metadata"]["labels"]), "router Service does not select the router pods")
svc_port(rsvc, rports)
cm_name = [v["configMap"]["name"] for v in rpod["spec"]["volumes"] if "configMap" in v]
check(len(cm_name) == 1, "router mounts one ConfigMap")
conf = docs[("ConfigMap", cm_name[0])]["data"]["nginx.conf"]
mounts = [m for m in rc["volumeMounts"] if m.get("subPath") == "nginx.conf"]
check(len(mounts) == 1 and mounts[0]["mountPath"] == "/etc/nginx/nginx.conf", "router mounts nginx.conf at /etc/nginx/nginx.conf")
check(re.search(rf"^\s*listen {rports['http']};", conf, re.M) is not None, "nginx listens on the router's container port")
for probe in ("livenessProbe", "readinessProbe"):
    p = rc[probe]["httpGet"]["path"]
    check(f"location = {p} " in conf, f"router {probe} path {p} is not a location in nginx.conf")
check(rpod["spec"]["terminationGracePeriodSeconds"] >= pod["spec"]["terminationGracePeriodSeconds"],
      "a router pod must wait for its streams as long as a bridge pod")
check("nginx -s quit" in str(rc.get("lifecycle", {})), "the router must quit gracefully (preStop nginx -s quit)")

loc = re.search(r'location ~ "\^/\(\?:media-stream\|call-ended\)/\(\?<pod>([^)]*)\)\$" \{(.*?)\n\s*\}', conf, re.S)
if check(loc is not None, "nginx.conf has no /(?:media-stream|call-ended)/(?<pod>…) location"):
    pod_re, body = loc.group(1), loc.group(2)
    check(re.fullmatch(pod_re, f"{name}-0") and re.fullmatch(pod_re, f"{name}-19"),
          "the pod pattern does not match the StatefulSet's pod names")
    for bad in ("evil.example.com", f"{name}-0.evil", "127.0.0.1", f"x{name}-0"):
        check(not re.fullmatch(pod_re, bad), f"the pod pattern lets {bad} through")
    pp = re.search(r"proxy_pass http://\$pod\.([a-z0-9-]+)\.([a-z0-9-]+)\.svc\.cluster\.local:(\d+);", body)
    if check(pp is not None, "media-stream proxy_pass is not $pod.<headless>.<ns>.svc.cluster.local:<port>"):
        check(pp.group(1) == headless_name, f"nginx routes streams via {pp.group(1)}, not {headless_name}")
        check(int(pp.group(3)) == headless_port, "nginx's stream port != the headless Service's port")
        ns = pp.group(2)
    for h in ("proxy_set_header Upgrade $http_upgrade;", "proxy_set_header Connection $connection_upgrade;", "proxy_buffering off;"):
        check(h in body, f"stream location lacks {h}")
    for t in ("proxy_read_timeout", "proxy_send_timeout"):
        v = re.search(rf"{t} (\d+)s;", body)
        check(v is not None and int(v.group(1)) >= 3600, f"stream location: {t} below an hour")
dflt = re.search(r"set \$webhooks ([a-z0-9-]+)\.([a-z0-9-]+)\.svc\.cluster\.local;\s*proxy_pass http://\$webhooks:(\d+);", conf)
if check(dflt is not None, "nginx.conf's default location does not go to <service>.<ns>.svc.cluster.local"):
    check(dflt.group(1) == name, f"webhooks go to {dflt.group(1)}, not Service {name}")
    check(int(dflt.group(3)) == web_port, "nginx's webhook port != Service twilio-realtime's port")
    check(loc is None or pp is None or dflt.group(2) == ns, "nginx.conf uses two namespaces")
check(re.search(r"^\s*resolver \S+", conf, re.M) is not None, "nginx.conf needs a resolver (per-request pod lookup)")

# --- Ingress ---------------------------------------------------------------------------------
(ing,) = [d for (k, _), d in docs.items() if k == "Ingress"]
(rule,) = ing["spec"]["rules"]
check(rule["host"] == public_host, "Ingress host != PUBLIC_URL's host")
check(any(public_host in t["hosts"] for t in ing["spec"]["tls"]), "Ingress has no TLS for PUBLIC_URL's host")
paths = {p["path"]: p for p in rule["http"]["paths"]}
rport_names = {p["name"] for p in rsvc["spec"]["ports"]}
for p in paths.values():
    b = p["backend"]["service"]
    check(b["name"] == rsvc["metadata"]["name"] and b["port"]["name"] in rport_names, f"Ingress {p['path']} must go to the router")
for route in ("/media-stream", "/call-ended"):
    check(paths.get(route, {}).get("pathType") == "Prefix", f"Ingress {route} must be a Prefix (it carries the pod name)")
for route in ("/incoming-call", "/call-ended", "/call-status"):
    check(route in paths, f"Ingress does not route {route}")
    check(f"`POST {route}`" in readme or route in readme, f"README does not mention {route}")
check("/metrics" not in paths, "the Ingress must not expose /metrics")

# --- nginx routing, run for real ---------------------------------------------------------------
# The ConfigMap's nginx.conf, run on 127.0.0.1 with a stand-in for the cluster DNS answering
# the names Kubernetes would create for these manifests (namespace `default`): each pod's
# name under the headless Service, and the Service twilio-realtime. Stand-ins for two pods and
# the Service (on 127.0.0.70/71/80, at the ports the manifests give them) record what reaches
# them. Changed from the ConfigMap: the resolver's and the listen address, the /tmp paths.
def route_check(nginx, conf, d):
    import socket
    import struct
    import threading
    import time

    ns = "default"
    names = {f"{name}-{i}.{headless_name}.{ns}.svc.cluster.local": f"127.0.0.{70 + i}" for i in (0, 1)}
    names[f"{name}.{ns}.svc.cluster.local"] = "127.0.0.80"
    asked = []
    seen = []  # (backend, request head, body)

    dns = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    dns.bind(("127.0.0.1", 0))

    def serve_dns():
        while True:
            try:
                q, peer = dns.recvfrom(512)
            except OSError:
                return
            i, labels = 12, []
            while q[i]:
                labels.append(q[i + 1:i + 1 + q[i]].decode())
                i += 1 + q[i]
            qname, qtype = ".".join(labels).lower(), struct.unpack(">H", q[i + 1:i + 3])[0]
            asked.append(qname)
            ip = names.get(qname) if qtype == 1 else None
            question = q[12:i + 5]
            head = q[:2] + struct.pack(">HHHHH", 0x8180 if ip else 0x8183, 1, 1 if ip else 0, 0, 0)
            answer = struct.pack(">HHHIH", 0xC00C, 1, 1, 5, 4) + socket.inet_aton(ip) if ip else b""
            dns.sendto(head + question + answer, peer)

    def backend(label, addr, port):
        s = socket.socket()
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        s.bind((addr, port))
        s.listen(16)

        def one(c):
            c.settimeout(5)
            data = b""
            while b"\r\n\r\n" not in data:
                data += c.recv(4096)
            head, body = data.split(b"\r\n\r\n", 1)
            head = head.decode()
            n = int(re.search(r"(?im)^content-length: *(\d+)", head).group(1)) if "ontent-length" in head else 0
            while len(body) < n:
                body += c.recv(4096)
            seen.append((label, head, body))
            if re.search(r"(?im)^upgrade: *websocket", head):
                c.sendall(b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\r\n")
                c.sendall(label.encode() + b":" + c.recv(64))
            else:
                c.sendall(b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\nConnection: close\r\n\r\n%s" % (len(label), label.encode()))
            c.close()

        def loop():
            while True:
                try:
                    c, _ = s.accept()
                except OSError:
                    return
                threading.Thread(target=one, args=(c,), daemon=True).start()

        threading.Thread(target=loop, daemon=True).start()
        return s

    try:
        socks = [backend("pod0", "127.0.0.70", ports["http"]), backend("pod1", "127.0.0.71", ports["http"]),
                 backend("service", "127.0.0.80", web_port)]
    except OSError as e:
        check(False, f"routing check: cannot listen on 127.0.0.70/71/80 at ports {ports['http']}, {web_port}: {e} (run as root)")
        return
    threading.Thread(target=serve_dns, daemon=True).start()
    free = socket.socket()
    free.bind(("127.0.0.1", 0))
    lb = free.getsockname()[1]
    free.close()
    t = re.sub(r"^(\s*resolver )\S+", rf"\g<1>127.0.0.1:{dns.getsockname()[1]}", conf, flags=re.M)
    t = re.sub(r"^(\s*listen )\d+;", rf"\g<1>127.0.0.1:{lb};", t, flags=re.M).replace("/tmp/", d + "/")
    path = os.path.join(d, "run.conf")
    open(path, "w").write(t)
    os.chmod(d, 0o755)
    proc = subprocess.Popen([nginx, "-p", d, "-c", path, "-g", "daemon off;"], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        for _ in range(100):
            try:
                socket.create_connection(("127.0.0.1", lb), timeout=1).close()
                break
            except OSError:
                time.sleep(0.05)

        def ask(raw, then=None):
            c = socket.create_connection(("127.0.0.1", lb), timeout=5)
            c.sendall(raw)
            data = b""
            while b"\r\n\r\n" not in data:
                data += c.recv(4096)
            status = int(data.split(b" ")[1])
            if status == 101 and then:
                c.sendall(then)
                want = then
                while not data.endswith(want):
                    more = c.recv(4096)
                    if not more:
                        break
                    data += more
            else:
                head, rest = data.split(b"\r\n\r\n", 1)
                n = re.search(rb"(?im)^content-length: *(\d+)", head)
                while n and len(rest) < int(n.group(1)):
                    rest += c.recv(4096)
                data = head + b"\r\n\r\n" + rest
            c.close()
            return status, data.split(b"\r\n\r\n", 1)[1]

        def upgrade(p):
            return (f"GET {p} HTTP/1.1\r\nHost: {public_host}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
                    "Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n"
                    "X-Twilio-Signature: sig\r\n\r\n").encode()

        for i in (1, 0):
            del seen[:]
            st, body = ask(upgrade(f"/media-stream/{name}-{i}"), b"frame")
            ok = st == 101 and body == f"pod{i}:frame".encode() and len(seen) == 1 and seen[0][0] == f"pod{i}"
            if check(ok, f"routing: /media-stream/{name}-{i} did not reach pod {i} as a WebSocket ({st} {body!r} {[s[0] for s in seen]})"):
                h = seen[0][1]
                check(h.startswith(f"GET /media-stream/{name}-{i} HTTP/1.1"), f"routing: the pod got {h.splitlines()[0]!r}")
                for hdr in (r"upgrade: *websocket", r"connection: *upgrade", rf"host: *{re.escape(public_host)}", r"x-twilio-signature: *sig", r"sec-websocket-key: "):
                    check(re.search(rf"(?im)^{hdr}", h), f"routing: the pod's upgrade request lacks {hdr}")
        del seen[:]
        form = b"CallSid=CA1&CallStatus=in-progress"
        st, body = ask(b"POST /call-ended/%s-1 HTTP/1.1\r\nHost: %s\r\nX-Twilio-Signature: sig\r\nContent-Type: application/x-www-form-urlencoded\r\nContent-Length: %d\r\n\r\n%s"
                       % (name.encode(), public_host.encode(), len(form), form))
        check(st == 200 and body == b"pod1" and [s[0] for s in seen] == ["pod1"] and seen[0][2] == form
              and seen[0][1].startswith(f"POST /call-ended/{name}-1 "),
              f"routing: /call-ended/{name}-1 did not reach pod 1 intact ({st} {body!r} {seen})")
        del seen[:]
        form = b"CallSid=CA1&From=%2B15550100"
        st, body = ask(b"POST /incoming-call HTTP/1.1\r\nHost: %s\r\nX-Twilio-Signature: sig\r\nContent-Type: application/x-www-form-urlencoded\r\nContent-Length: %d\r\n\r\n%s"
                       % (public_host.encode(), len(form), form))
        check(st == 200 and body == b"service" and [s[0] for s in seen] == ["service"] and seen[0][2] == form
              and seen[0][1].startswith("POST /incoming-call ") and re.search(rf"(?im)^host: *{re.escape(public_host)}", seen[0][1]),
              f"routing: the webhook did not reach the Service intact ({st} {body!r} {seen})")
        del seen[:]
        st, body = ask(upgrade("/media-stream/evil.example.com"), b"frame")
        check([s[0] for s in seen] == ["service"] and not any("evil" in a for a in asked),
              f"routing: /media-stream/evil.example.com must go to the Service, not be looked up ({seen}, {asked})")
        del seen[:]
        st, _ = ask(upgrade(f"/media-stream/{name}-7"), b"frame")
        check(st == 502 and not seen, f"routing: a pod that does not exist should be a 502, got {st}")
        st, _ = ask(f"GET /metrics HTTP/1.1\r\nHost: {public_host}\r\n\r\n".encode())
        check(st == 404 and not seen, "routing: /metrics must not pass the router")
        st, body = ask(b"GET /router-healthz HTTP/1.1\r\nHost: x\r\n\r\n")
        check(st == 200, "routing: /router-healthz")
        print(f"nginx routing: {'FAILED' if failures else 'ok'} (names looked up: {', '.join(sorted(set(asked)))})")
    finally:
        proc.terminate()
        err = proc.communicate(timeout=10)[1].decode()
        for s in socks + [dns]:
            s.close()
        if failures:
            print(err[-3000:])


# --- nginx -t on the ConfigMap's nginx.conf ---------------------------------------------------
nginx = shutil.which("nginx") or (os.path.exists("/usr/sbin/nginx") and "/usr/sbin/nginx")
if nginx:
    with tempfile.TemporaryDirectory() as d:
        # Standalone: the cluster DNS name is not resolvable here (nginx resolves the resolver's
        # name when it loads), and /tmp paths go to a scratch directory; nothing else changes.
        t = re.sub(r"^(\s*resolver )\S+", r"\g<1>127.0.0.1", conf, flags=re.M).replace("/tmp/", d + "/")
        path = os.path.join(d, "nginx.conf")
        open(path, "w").write(t)
        r = subprocess.run([nginx, "-t", "-q", "-p", d, "-c", path], capture_output=True, text=True)
        check(r.returncode == 0, f"nginx -t failed: {r.stderr.strip()}")
        print(f"nginx -t: {'ok' if r.returncode == 0 else 'FAILED'} ({nginx})")
        if r.returncode == 0:
            route_check(nginx, conf, d)
else:
    print("nginx is not installed: nginx -t and the routing check NOT run (apt-get install -y nginx)")

if failures:
    for f in failures:
        print("FAIL:", f)
    sys.exit(1)
print(f"deploy/: {len(docs)} objects agree with each other, README and the Dockerfile")
