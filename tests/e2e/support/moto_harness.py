"""A real S3 server (moto) for c2i's tests.

    python3 moto_harness.py ensure VENV SPEC
        Creates the virtual environment VENV and installs SPEC (a pinned
        `moto[server]==X.Y.Z`) into it, once: concurrent callers wait on a lock, and a
        half-made environment (no `.ready` marker) is rebuilt.

    python3 moto_harness.py serve-403
        Answers every request with what S3 answers a request whose signature it
        rejects: 403 and a SignatureDoesNotMatch document that, like S3's, echoes the
        access key id, the string to sign and the canonical request (with the session
        token header). For checking that c2i never shows or stores such a body. Prints
        `PORT <n>`, stops like `serve`.

    VENV/bin/python moto_harness.py serve BUCKET...
        Starts moto's S3 on 127.0.0.1 on a free port, creates the buckets, checks
        that the server answers, then prints `PORT <n>` and serves until stdin closes
        or the parent process goes away (its pid changes), so a killed test never
        leaves a server behind.
"""

import fcntl
import os
import shutil
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request


def ensure(venv, spec):
    os.makedirs(os.path.dirname(os.path.abspath(venv)), exist_ok=True)
    ready = os.path.join(venv, ".ready")
    with open(venv + ".lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if os.path.exists(ready):
            with open(ready) as f:
                if f.read().strip() == spec:
                    return
        shutil.rmtree(venv, ignore_errors=True)
        subprocess.run([sys.executable, "-m", "venv", venv], check=True)
        py = os.path.join(venv, "bin", "python")
        subprocess.run(
            [py, "-m", "pip", "install", "--disable-pip-version-check", "-q", spec],
            check=True,
        )
        with open(ready, "w") as f:
            f.write(spec + "\n")


def watchdog(parent):
    # Exit when the test process that started us is gone (we get re-parented) or
    # closes our stdin (its end of the pipe).
    def by_pid():
        while os.getppid() == parent:
            time.sleep(0.2)
        os._exit(0)

    def by_stdin():
        try:
            while sys.stdin.buffer.read(1024):
                pass
        except Exception:
            pass
        os._exit(0)

    threading.Thread(target=by_pid, daemon=True).start()
    threading.Thread(target=by_stdin, daemon=True).start()


def serve(buckets):
    parent = os.getppid()
    watchdog(parent)
    from moto.server import ThreadedMotoServer

    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    _, port = server.get_host_and_port()
    base = "http://127.0.0.1:%d" % port
    deadline = time.time() + 30
    while True:
        try:
            urllib.request.urlopen(base + "/", timeout=2).read()
            break
        except urllib.error.HTTPError:
            break  # it answers
        except Exception:
            if time.time() > deadline:
                raise
            time.sleep(0.1)
    for b in buckets:
        req = urllib.request.Request(base + "/" + b, method="PUT")
        urllib.request.urlopen(req, timeout=10).read()
    print("PORT %d" % port, flush=True)
    while True:
        time.sleep(3600)


def serve_403():
    import http.server
    import re

    parent = os.getppid()
    watchdog(parent)

    class Handler(http.server.BaseHTTPRequestHandler):
        def answer(self):
            length = int(self.headers.get("Content-Length") or 0)
            if length:
                self.rfile.read(length)
            auth = self.headers.get("Authorization", "")
            m = re.search(r"Credential=([^/,]+)", auth)
            key_id = m.group(1) if m else ""
            token = self.headers.get("X-Amz-Security-Token", "")
            canonical = "%s\n%s\n\nhost:%s\nx-amz-security-token:%s\n" % (
                self.command,
                self.path,
                self.headers.get("Host", ""),
                token,
            )
            body = (
                '<?xml version="1.0" encoding="UTF-8"?>\n<Error><Code>SignatureDoesNotMatch</Code>'
                "<Message>The request signature we calculated does not match the signature you "
                "provided. Check your key and signing method.</Message>"
                "<AWSAccessKeyId>%s</AWSAccessKeyId><StringToSign>AWS4-HMAC-SHA256 %s</StringToSign>"
                "<SignatureProvided>%s</SignatureProvided><CanonicalRequest>%s</CanonicalRequest>"
                "<RequestId>C2ITEST</RequestId></Error>" % (key_id, token, auth, canonical)
            ).encode()
            self.send_response(403)
            self.send_header("Content-Type", "application/xml")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            if self.command != "HEAD":
                self.wfile.write(body)

        do_GET = do_PUT = do_HEAD = do_POST = do_DELETE = answer

        def log_message(self, *args):
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    print("PORT %d" % server.server_address[1], flush=True)
    server.serve_forever()


if __name__ == "__main__":
    if len(sys.argv) >= 4 and sys.argv[1] == "ensure":
        ensure(sys.argv[2], sys.argv[3])
    elif len(sys.argv) == 2 and sys.argv[1] == "serve-403":
        serve_403()
    elif len(sys.argv) >= 2 and sys.argv[1] == "serve":
        try:
            serve(sys.argv[2:])
        except BaseException:
            import traceback

            traceback.print_exc()
            sys.stderr.flush()
            os._exit(1)
    else:
        sys.exit(__doc__)
