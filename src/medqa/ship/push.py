"""Upload a run to the Hugging Face Hub: the adapter or merged model with its model card, or a Space.

    medqa push RUN_DIR --repo USER/NAME [--merged [--from-export DIR]] [--space] [--private] [--dry-run DIR]

`assemble` writes exactly the folder to upload (adapter or merged model + README.md, or a Spaces folder
from `medqa.ship.space.space_export`); `push` writes it locally with `dry_run_dir` (no network), or creates
the repo and uploads it. The token (argument, `HF_TOKEN`, or the saved login) is never printed or written;
Hub errors become one-line MedQA errors with any token masked.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import socket
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

from medqa.errors import ConfigError, MedQAError, ModelError
from medqa.io import atomic_write_text
from medqa.modeling import HUB_ID
from medqa.ship.card import build_model_card, check_card
from medqa.ship.export import STUDY_AID, add_model_flags, check_out_dir, export_merged, model_options, staged_folder
from medqa.ship.run import EXPORT_INFO, ExportError, HubError, HubUnreachableError, load_json, locate

_TOKEN_LIKE = re.compile(r"hf_[A-Za-z0-9]{6,}")
_SKIP_FILES = {"README.md", "training_args.bin"}
_PICKLE = (".bin", ".pt", ".pth", ".pkl", ".ckpt")
_NETWORK_NAMES = {"ConnectError", "ConnectTimeout", "NetworkError", "TransportError", "TimeoutException",
                  "ProxyError", "ReadTimeout", "RemoteProtocolError", "NameResolutionError", "NewConnectionError",
                  "OfflineModeIsEnabled"}


# ----------------------------------------------------------------------------- token and Hub errors


def mask_token(text: str, token: str | None = None) -> str:
    """`text` with `token` and anything that looks like a Hugging Face token replaced by `hf_***`."""
    if token:
        text = text.replace(token, "hf_***")
    return _TOKEN_LIKE.sub("hf_***", text)


def resolve_token(token: str | None = None) -> str | None:
    """`token`, else `HF_TOKEN`, else the saved login. Never printed."""
    if token:
        return token
    if os.environ.get("HF_TOKEN"):
        return os.environ["HF_TOKEN"]
    try:
        from huggingface_hub import get_token

        return get_token()
    except Exception:  # noqa: BLE001 - a broken login store is the same as no login here
        return None


def _endpoint() -> str:
    return os.environ.get("HF_ENDPOINT", "https://huggingface.co").rstrip("/")


def _is_network_error(e: BaseException) -> bool:
    seen = set()
    cur: BaseException | None = e
    while cur is not None and id(cur) not in seen:
        seen.add(id(cur))
        if isinstance(cur, (ConnectionError, TimeoutError, socket.gaierror)):
            return True
        if any(c.__name__ in _NETWORK_NAMES for c in type(cur).__mro__):
            return True
        cur = cur.__cause__ or cur.__context__
    return False


def _unreachable(why: str) -> HubUnreachableError:
    return HubUnreachableError(
        f"cannot reach the Hugging Face Hub at {_endpoint()} ({why}); check the network, "
        "or write the exact upload folder locally with --dry-run DIR"
    )


def _hub_call(what: str, fn: Callable[[], Any], token: str | None) -> Any:
    """Run one Hub request; network failures and HTTP errors become one-line MedQA errors, token masked."""
    try:
        return fn()
    except MedQAError:
        raise
    except Exception as e:  # noqa: BLE001
        first = mask_token(" ".join(str(e).split())[:300], token) or type(e).__name__
        if _is_network_error(e):
            raise _unreachable(f"{type(e).__name__}: {first}") from None
        status = getattr(getattr(e, "response", None), "status_code", None)
        if status == 401:
            raise HubError(f"{what}: the Hub rejected the token (401 Unauthorized); run `hf auth login` or set HF_TOKEN "
                           "to a token with write access") from None
        if status == 403:
            raise HubError(f"{what}: permission denied (403); the token cannot write to this repo or namespace") from None
        raise HubError(f"{what} failed ({type(e).__name__}): {first}") from None


# ----------------------------------------------------------------------------- the upload folder


def _copy_adapter(adapter_dir: Path, dest: Path, hub_base: str | None) -> None:
    if not (adapter_dir / "adapter_model.safetensors").is_file():
        raise ModelError(f"{adapter_dir}: no adapter_model.safetensors (pickle adapters are not uploaded)")
    dest.mkdir(parents=True, exist_ok=True)
    for f in sorted(adapter_dir.iterdir()):
        if not f.is_file() or f.name in _SKIP_FILES or f.suffix in _PICKLE or f.name.startswith("."):
            continue
        shutil.copy2(f, dest / f.name)
    if hub_base:  # the training machine's local path means nothing on the Hub
        conf = json.loads((dest / "adapter_config.json").read_text(encoding="utf-8"))
        conf["base_model_name_or_path"] = hub_base
        (dest / "adapter_config.json").write_text(json.dumps(conf, indent=2, sort_keys=True) + "\n", encoding="utf-8")


def _copy_merged(src: Path, dest: Path) -> dict[str, Any]:
    info = load_json(src / EXPORT_INFO)
    if info is None or not any(src.glob("*.safetensors")):
        raise ExportError(f"{src}: not a verified merged export (run `medqa export RUN_DIR --merge --out DIR` first)")
    dest.mkdir(parents=True, exist_ok=True)
    for f in sorted(src.iterdir()):
        if f.is_file() and f.suffix not in _PICKLE and f.name != "README.md" and not f.name.startswith("."):
            shutil.copy2(f, dest / f.name)
    return info


def assemble(
    run_dir: str | Path,
    dest: str | Path,
    repo_id: str | None,
    what: str = "adapter",
    space: bool = False,
    *,
    merged_dir: str | Path | None = None,
    base_model: str | None = None,
    revision: str | None = None,
    allow_pickle: bool = False,
    trust_remote_code: bool = False,
    device: str = "cpu",
    echo: Callable[[str], None] | None = print,
) -> Path:
    """Write exactly the folder to upload into `dest` (which must not exist)."""
    if what not in ("adapter", "merged"):
        raise ConfigError(f"what must be 'adapter' or 'merged' (got {what!r})")
    info = locate(run_dir, base_model, revision)
    if info.run_dir is None:
        raise ModelError(f"{run_dir}: push needs the run directory (for the model card), not only the adapter")
    dest = Path(dest)
    with tempfile.TemporaryDirectory(prefix=".medqa-push-", dir=dest.parent) as work:
        merged_src = Path(merged_dir) if merged_dir else None
        if what == "merged" and merged_src is None:
            merged_src = Path(work) / "merged"
            export_merged(info.run_dir, merged_src, base_model=base_model, revision=revision, device=device,
                          allow_pickle=allow_pickle, trust_remote_code=trust_remote_code, echo=echo)
        if space:
            from medqa.ship.space import space_export  # (imports the Gradio front-end's pieces: only when asked)

            if what == "merged":
                assert merged_src is not None
                _copy_merged(merged_src, Path(work) / "model")
                space_export(dest, str(Path(work) / "model"))
            else:
                space_export(dest, info.base, str(info.adapter_dir), force_base=base_model is not None)
            return dest
        stage = Path(work) / "stage"
        export_info = _copy_merged(merged_src, stage) if what == "merged" else None
        if what == "adapter":
            _copy_adapter(info.adapter_dir, stage, info.hub_base)
        card = build_model_card(info.run_dir, repo_id, merged=what == "merged", export_info=export_info)
        check_card(card)
        atomic_write_text(stage / "README.md", str(card))
        os.replace(stage, dest)
    return dest


def _listing(folder: Path) -> list[tuple[str, int]]:
    return sorted((p.relative_to(folder).as_posix(), p.stat().st_size) for p in folder.rglob("*") if p.is_file())


# ----------------------------------------------------------------------------- push


def _list_dry_run(out: Path, repo_id: str, kind: str, private: bool, echo: Callable[[str], None]) -> dict[str, Any]:
    files = _listing(out)
    echo(f"dry run: would create {'private ' if private else ''}{kind} repo {repo_id} and upload {len(files)} files "
         f"from {out}:")
    for name, size in files:
        echo(f"  {name}  ({size:,} bytes)")
    return {"dry_run": True, "folder": str(out), "files": [n for n, _ in files], "repo_id": repo_id, "repo_type": kind}


def _upload(folder_of: Callable[[Path], Path], repo_id: str, kind: str, private: bool, message: str,
            token: str | None, echo: Callable[[str], None]) -> dict[str, Any]:
    """Check the token, build the folder (`folder_of(work_dir)`), create the repo and upload the folder."""
    tok = resolve_token(token)
    if os.environ.get("HF_HUB_OFFLINE", "").strip().lower() in ("1", "true", "yes", "on"):
        raise _unreachable("HF_HUB_OFFLINE is set")
    if not tok:
        raise HubError("no Hugging Face token: set HF_TOKEN or run `hf auth login` (or use --dry-run DIR to write "
                       "the folder without uploading)")
    from huggingface_hub import HfApi

    api = HfApi(endpoint=_endpoint(), token=tok)
    user = _hub_call("checking the token", api.whoami, tok)  # fails fast offline, before any export work
    with tempfile.TemporaryDirectory(prefix="medqa-push-") as work:
        folder = folder_of(Path(work))
        files = _listing(folder)
        create: dict[str, Any] = dict(repo_type=kind, private=private, exist_ok=True)
        if kind == "space":
            create["space_sdk"] = "gradio"
        url = _hub_call("creating the repo", lambda: api.create_repo(repo_id, **create), tok)
        commit = _hub_call("uploading", lambda: api.upload_folder(repo_id=repo_id, folder_path=str(folder),
                                                                  repo_type=kind, commit_message=message), tok)
    name = user.get("name") if isinstance(user, dict) else None
    echo(f"uploaded {len(files)} files to {url}" + (f" as {name}" if name else ""))
    return {"dry_run": False, "url": str(url), "commit": str(getattr(commit, "oid", "") or commit),
            "files": [n for n, _ in files], "repo_id": repo_id, "repo_type": kind}


def push(
    run_dir: str | Path,
    repo_id: str,
    what: str = "adapter",
    space: bool = False,
    private: bool = False,
    dry_run_dir: str | Path | None = None,
    token: str | None = None,
    *,
    commit_message: str | None = None,
    echo: Callable[[str], None] = print,
    **options: Any,
) -> dict[str, Any]:
    """Upload the run's adapter (or merged model) with its model card, or a Space, to `repo_id`.

    With `dry_run_dir`, write exactly that folder there and list it; nothing touches the network.
    `options` are `assemble`'s: merged_dir, base_model, revision, allow_pickle, trust_remote_code, device.
    """
    if not HUB_ID.match(repo_id or ""):
        raise ConfigError(f"--repo must be a Hub id like USER/NAME (got {repo_id!r})")
    kind = "space" if space else "model"
    if dry_run_dir is not None:
        out = Path(dry_run_dir)
        check_out_dir(out, overwrite=False)
        with staged_folder(out) as folder:
            assemble(run_dir, folder, repo_id, what, space, echo=echo, **options)
        return _list_dry_run(out, repo_id, kind, private, echo)
    message = commit_message or f"medqa: upload {'Space' if space else what}"
    return _upload(lambda work: assemble(run_dir, work / "upload", repo_id, what, space, echo=echo, **options),
                   repo_id, kind, private, message, token, echo)


# ----------------------------------------------------------------------------- CLI


def add_push_parser(subparsers: Any) -> argparse.ArgumentParser:
    p = subparsers.add_parser("push", allow_abbrev=False, help="upload a run's adapter or merged model (with a model card) to the Hub",
                              description="Upload to the Hugging Face Hub. The token comes from HF_TOKEN or the saved "
                                          "login (`hf auth login`) and is never printed. " + STUDY_AID)
    p.add_argument("run_dir", metavar="RUN_DIR", help="run directory")
    p.add_argument("--repo", required=True, metavar="ID", help="repo id, USER/NAME (a Space id with --space)")
    p.add_argument("--merged", action="store_true", help="upload the merged model instead of the adapter")
    p.add_argument("--from-export", metavar="DIR", help="with --merged: reuse a folder from `medqa export --merge`")
    p.add_argument("--space", action="store_true", help="upload a Gradio Space (app, medqa, model/adapter) instead")
    p.add_argument("--private", action="store_true", help="create the repo private")
    p.add_argument("--dry-run", metavar="DIR", help="write exactly the upload folder to DIR and list it; no network")
    p.add_argument("--message", help="commit message")
    add_model_flags(p)
    p.set_defaults(handler=push_main)
    return p


def push_main(args: argparse.Namespace, echo: Callable[[str], None] = print) -> int:
    if args.from_export and not args.merged:
        raise ConfigError("--from-export needs --merged")
    push(args.run_dir, args.repo, what="merged" if args.merged else "adapter", space=args.space,
         private=args.private, dry_run_dir=args.dry_run, merged_dir=args.from_export, commit_message=args.message,
         echo=echo, **model_options(args))
    return 0
