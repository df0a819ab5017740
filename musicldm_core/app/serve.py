"""`musicldm serve`: a local page to try prompts, listen, compare takes and keep the good ones.

    musicldm serve [--host 127.0.0.1] [--port 7860] [--out-dir ./musicldm-out] [--weights ...] [--device ...]
                   [--dtype ...] [--compile] [--max-queue 16] [--token T] [--open]

The standard library's HTTP server and one static page (static/index.html: no framework, no external URL),
so it keeps working when UI frameworks move on. The model loads once; one worker thread runs the jobs one
at a time while the HTTP side keeps answering. A job is a batch line (batch.FIELDS, the same checks and
messages) plus audio-to-audio's fields, and it is made as batch mode makes an item: DIR/<id>.wav (takes:
<id>-1.wav ..., best first) and its record in DIR/manifest.jsonl, each written whole or not at all, plus
DIR/<id>.png, the mel spectrogram the VAE decoded. `--prompts` runs and the page share one history.

The HTTP API (the page uses it):
    POST   /api/jobs        JSON {"prompt": ..., "negative", "seconds", "seed", "steps", "guidance", "takes",
                            "sampler", "loop", "exact_batches", "strength", "inpaint": [start, end], "extend"},
                            or multipart with the same fields and an `audio` file part -> 202 {"id"}; a bad field -> 400
                            {"error", "field"}; the queue full -> 503; too large -> 413
    GET    /api/jobs        every job, newest first; GET /api/jobs/ID: one ({"state": queued | running | done
                            | failed | cancelled, "progress": 0-1, "error", "seed", "files", "pictures", ...})
    DELETE /api/jobs/ID     cancel: a queued job leaves the queue, a running one stops at its next step
    GET    /files/NAME      a file this server (or a batch run into DIR) recorded; nothing else
    GET    /api/openapi.json  this API as an OpenAPI 3.0 document (serve_api.py)

Safe by default: it binds 127.0.0.1; a Host header other than the served address is refused (DNS
rebinding); a POST or DELETE from another origin is refused (a page elsewhere cannot start jobs); binding
beyond loopback needs --token, and then every call and file carries it (`Authorization: Bearer T`, or
`?token=T` for the page and its players); bodies are bounded (JSON 64 KB, uploads 50 MB, input audio as
long as a job may ask); only recorded files inside DIR are served, never through a symlink.
"""

from __future__ import annotations

import argparse
import signal
import sys
from pathlib import Path
from typing import List, Optional

from .jobs import Service
from .web import LOOPBACK, Server

def build_parser() -> argparse.ArgumentParser:
    from ..hub import DEFAULT_REPO

    p = argparse.ArgumentParser(prog="musicldm serve", description="A local page to make music with MusicLDM.")
    p.add_argument("--host", default="127.0.0.1", help="the address to bind (default 127.0.0.1: this machine only)")
    p.add_argument("--port", type=int, default=7860, help="default 7860; 0 picks a free one")
    p.add_argument("--out-dir", default="musicldm-out", help="where the files and manifest.jsonl go (default "
                   "./musicldm-out)")
    p.add_argument("--weights", default=DEFAULT_REPO, help=f"checkpoint folder or Hub id (default {DEFAULT_REPO})")
    p.add_argument("--device", default=None, help="cpu, cuda, cuda:N or mps (default: the best available)")
    p.add_argument("--dtype", choices=["float32", "float16", "bfloat16"], default=None)
    p.add_argument("--compile", action="store_true", help="compile the models first (torch.compile)")
    p.add_argument("--exact-batches", action="store_true", help="jobs run the UNet one row at a time, each take "
                   "equal to its single run to the bit (slower; a job's exact_batches field overrides it)")
    p.add_argument("--max-queue", type=int, default=16, help="jobs that may wait (default 16); more get 503")
    p.add_argument("--token", default=None, help="a secret every call must carry; needed beyond loopback")
    p.add_argument("--open", action="store_true", help="open the page in the browser")
    p.add_argument("--verbose", action="store_true", help="log every request")
    return p


def main(argv: Optional[List[str]] = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return serve(args)
    except KeyboardInterrupt:
        return 0
    except Exception as e:
        print(f"musicldm serve: error: {str(e).splitlines()[0] if str(e) else type(e).__name__}", file=sys.stderr)
        return 1


def serve(args: argparse.Namespace) -> int:
    """Check everything, load the model once, answer until Ctrl-C."""
    if args.max_queue < 1:
        raise ValueError(f"--max-queue must be at least 1, got {args.max_queue}")
    if not 0 <= args.port <= 65535:
        raise ValueError(f"--port must be between 0 and 65535, got {args.port}")
    if args.host not in LOOPBACK and not args.token:
        raise ValueError(f"--host {args.host} reaches beyond this machine: give --token T (every call must carry it)")
    from .batch import check_out_dir
    from ..load import open_checkpoint
    from .manifest import lock_folder
    from .files import remove_temporaries
    from .prepare import open_pipeline, run_device

    # Ctrl-C and a polite kill stop it cleanly, even where the shell started it with SIGINT ignored
    signal.signal(signal.SIGINT, signal.default_int_handler)
    signal.signal(signal.SIGTERM, signal.default_int_handler)
    out_dir = check_out_dir(Path(args.out_dir))
    device, dtype = run_device(args.device, args.dtype)
    checkpoint = open_checkpoint(args.weights)
    with lock_folder(out_dir):
        remove_temporaries(out_dir)
        try:  # the port is taken before the model loads: a port in use is said at once
            server = Server(None, args.host, args.port, args.token, args.verbose)
        except OSError as e:
            raise ValueError(f"--port {args.port}: cannot listen on {args.host}:{args.port} ({e.strerror or e}); "
                             "choose another --port (0 picks a free one)") from None
        pipe = open_pipeline(checkpoint.folder, device, dtype, compile=args.compile)  # each job sets its exactness
        server.service = Service(pipe, out_dir, str(args.weights), args.max_queue, device, dtype, args.exact_batches)
        service = server.service
        service.start()
        try:
            url = server.address + (f"/?token={args.token}" if args.token else "/")
            print(f"musicldm serve: {url} (files in {out_dir}; Ctrl-C stops)", flush=True)
            if args.open:
                import webbrowser

                webbrowser.open(url)
            server.serve_forever(poll_interval=0.2)
        except KeyboardInterrupt:
            print("musicldm serve: stopping", file=sys.stderr)
        finally:
            server.server_close()
            service.stop()
            remove_temporaries(out_dir)
    return 0
