"""``python -m threestudio.gallery [ROOT] [--port 8080] [--host 127.0.0.1] [--export SITE]``: every trial under ROOT
(default ``outputs/``) in one local web page; see :mod:`threestudio.gallery`."""

from __future__ import annotations

import argparse
import os
import sys
from typing import Optional, Sequence


def main(argv: Optional[Sequence[str]] = None) -> int:
    p = argparse.ArgumentParser(prog="python -m threestudio.gallery",
                                description="Browse every trial (videos, meshes, splats, curves, configs) in a local "
                                "web page. Read-only: nothing under ROOT is written.")
    p.add_argument("root", nargs="?", default="outputs", help="the folder of experiments (launch.py's exp_root_dir)")
    p.add_argument("--port", type=int, default=8080, help="port to serve on (0: any free port)")
    p.add_argument("--host", default="127.0.0.1", help="address to bind (default: this machine only)")
    p.add_argument("--export", metavar="SITE", default=None,
                   help="write a static copy of the gallery to SITE (outside ROOT) instead of serving it")
    p.add_argument("--verbose", action="store_true", help="log every request")
    args = p.parse_args(argv)
    if not os.path.isdir(args.root):
        print(f"error: {args.root} is not a folder (pass the exp_root_dir of your runs, e.g. outputs/)",
              file=sys.stderr)
        return 2
    if args.export:
        from threestudio.gallery.export import ExportError, export_site

        try:
            n = export_site(args.root, args.export)
        except ExportError as e:
            print(f"error: {e}", file=sys.stderr)
            return 2
        print(f"Exported {n['trials']} trials ({n['files']} files) to {args.export}: serve it with any static web "
              f"server, e.g. `python -m http.server -d {args.export}`.")
        return 0
    from threestudio.gallery.server import make_server

    try:
        httpd, url = make_server(args.root, args.host, args.port, args.verbose)
    except OSError as e:
        print(f"error: cannot listen on {args.host}:{args.port}: {e.strerror} (try --port 0)", file=sys.stderr)
        return 2
    print(f"Gallery of {os.path.abspath(args.root)} at {url} (Ctrl-C to stop)", flush=True)
    try:
        httpd.serve_forever()
    except KeyboardInterrupt:
        pass
    finally:
        httpd.server_close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
