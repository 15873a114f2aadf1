#!/usr/bin/env python3
"""A local stand-in for the Hugging Face hub, for testing weights/download.sh offline.

    python3 tools/hub_standin.py ROOT [--cut FILE] [--wrong-sum FILE] [--no-sum FILE]

Serves ROOT/REPO/PATH at http://127.0.0.1:PORT/REPO/resolve/main/PATH (prints PORT on its first
line, then serves until killed). Like the hub, every response to a file carries an
`x-linked-etag` header with the file's SHA-256 (its LFS object id) and answers `Range: bytes=N-`
requests with 206; FILE options (paths relative to ROOT) change that for one file:
  --cut FILE        the first full GET sends half the body and drops the connection
  --wrong-sum FILE  the etag is the SHA-256 of other bytes
  --no-sum FILE     no x-linked-etag header (a file that is not in LFS)
Every request is logged on stderr as `METHOD PATH RANGE`.
"""
import hashlib
import http.server
import os
import socketserver
import sys


def main():
    args = sys.argv[1:]
    if not args:
        sys.exit(__doc__)
    root, opts = os.path.abspath(args[0]), {"--cut": set(), "--wrong-sum": set(), "--no-sum": set()}
    for flag, value in zip(args[1::2], args[2::2]):
        opts[flag].add(value)
    cut_done = set()

    class Hub(http.server.BaseHTTPRequestHandler):
        def log_message(self, fmt, *a):
            pass

        def file(self):
            parts = self.path.split("/resolve/main/", 1)
            if len(parts) != 2:
                return None, None
            rel = os.path.normpath(os.path.join(parts[0].lstrip("/"), parts[1]))
            path = os.path.join(root, rel)
            if rel.startswith("..") or not os.path.isfile(path):
                return None, None
            return rel, path

        def answer(self, body):
            rel, path = self.file()
            rng = self.headers.get("Range", "")
            sys.stderr.write("%s %s %s\n" % (self.command, self.path, rng or "-"))
            sys.stderr.flush()
            if not rel:
                self.send_error(404)
                return
            data = open(path, "rb").read()
            start = 0
            if rng.startswith("bytes=") and rng.endswith("-"):
                start = int(rng[6:-1])
            if start > len(data):
                self.send_error(416)
                return
            self.send_response(206 if start else 200)
            if rel not in opts["--no-sum"]:
                digest = hashlib.sha256(data + (b"!" if rel in opts["--wrong-sum"] else b"")).hexdigest()
                self.send_header("x-linked-etag", '"%s"' % digest)
            if start:
                self.send_header("Content-Range", "bytes %d-%d/%d" % (start, len(data) - 1, len(data)))
            self.send_header("Content-Length", str(len(data) - start))
            self.send_header("Accept-Ranges", "bytes")
            self.end_headers()
            if not body:
                return
            if rel in opts["--cut"] and rel not in cut_done and not start:
                cut_done.add(rel)
                self.wfile.write(data[: len(data) // 2])
                self.wfile.flush()
                self.close_connection = True
                return
            self.wfile.write(data[start:])

        def do_HEAD(self):
            self.answer(False)

        def do_GET(self):
            self.answer(True)

    class Server(socketserver.ThreadingMixIn, http.server.HTTPServer):
        daemon_threads = True

    server = Server(("127.0.0.1", 0), Hub)
    print(server.server_address[1], flush=True)
    server.serve_forever()


if __name__ == "__main__":
    main()
