"""Download the community's published packed shards (OMGprot50, UniRef50, OG_prot90) from the Hugging Face Hub.

    python data/download_data.py --data_name omg_prot50 --num_chunks 10 [--output_dir data/omg_prot50]

Fetches `{data_name}_valid_000000.bin`, `{data_name}_test_000000.bin` and `--num_chunks` train shards
`{data_name}_train_000000.bin ...` from the dataset repo `Synthyra/{data_name}_packed` (the names used by
Synthyra/SpeedrunningPLMs `data/download_data.py`; about 1e8 tokens per train shard). Resumable: a file that is
already present with a valid header is skipped, an invalid one is fetched again. Every file's header and length
are checked after download (`shards.read_header`). The Hub token, if needed, comes only from the `HF_TOKEN`
environment variable, never from the command line (where `ps` and shell history would show it).
It is the only code in the project that touches the network.
"""
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # run as a script: import shards

import argparse
import os

from shards import ShardError, read_header, shard_name

REPO_ROOT = Path(__file__).resolve().parent.parent
KNOWN_DATASETS = ("omg_prot50", "uniref50", "og_prot90")


class DownloadError(Exception):
    """A failed download, in one line that names the file or repository and what went wrong."""


def shard_files(data_name: str, num_chunks: int) -> list[str]:
    """File names to fetch: valid shard 0, test shard 0, then train shards 0 .. num_chunks-1."""
    return [shard_name(data_name, "valid", 0), shard_name(data_name, "test", 0)] + \
           [shard_name(data_name, "train", i) for i in range(num_chunks)]


def download(data_name: str, num_chunks: int, output_dir, token: str | None) -> list[Path]:
    """Fetch the shards of `Synthyra/{data_name}_packed` into `output_dir`; return their paths.

    token: a Hugging Face token, or None to send none (public repos need none).
    Raises DownloadError (offline, missing repo or file, a downloaded file that is not a valid shard).
    """
    from huggingface_hub import hf_hub_download  # optional at import time; only this script needs it
    from huggingface_hub.errors import EntryNotFoundError, LocalEntryNotFoundError, RepositoryNotFoundError

    repo_id = f"Synthyra/{data_name}_packed"
    output_dir = Path(output_dir)
    output_dir.mkdir(parents=True, exist_ok=True)
    paths = []
    for i, filename in enumerate(shard_files(data_name, num_chunks), 1):
        path = output_dir / filename
        stale = False
        if path.exists():
            try:
                n_tokens = read_header(path)
                print(f"[{i}] {path}: present and valid ({n_tokens:,} tokens), skipped")
                paths.append(path)
                continue
            except ShardError as e:
                print(f"[{i}] {e}; downloading it again")
                stale = True
        print(f"[{i}] {repo_id}/{filename} -> {output_dir}", flush=True)
        try:
            fetched = Path(hf_hub_download(repo_id=repo_id, filename=filename, repo_type="dataset",
                                           local_dir=output_dir, token=token or False, force_download=stale))
        except LocalEntryNotFoundError:  # what huggingface_hub raises when the Hub cannot be reached
            raise DownloadError(f"cannot reach the Hugging Face Hub to fetch {repo_id}/{filename} "
                                "(offline? HF_HUB_OFFLINE set?)") from None
        except RepositoryNotFoundError:
            raise DownloadError(f"dataset repo {repo_id} not found or not accessible (check --data_name; "
                                f"known: {', '.join(KNOWN_DATASETS)}; a private repo needs HF_TOKEN)") from None
        except EntryNotFoundError:
            raise DownloadError(f"{repo_id} has no file {filename} (is --num_chunks larger than the number of "
                                "published train shards?)") from None
        except OSError as e:  # other HTTP and network failures; their first line is the useful part
            first_line = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
            raise DownloadError(f"downloading {repo_id}/{filename} failed: {first_line}") from None
        try:
            read_header(fetched)
        except ShardError as e:
            raise DownloadError(f"downloaded file is not a valid shard: {e}") from None
        paths.append(fetched)
    return paths


def refused_token_argument(argv: list[str]) -> str | None:
    """The token flag on the command line, if any: tokens must not appear in `ps` or shell history."""
    for arg in argv:
        flag = arg.split("=", 1)[0]
        if flag in ("--token", "--hf_token"):
            return flag
    return None


def main(argv=None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    prog = Path(sys.argv[0]).name
    flag = refused_token_argument(argv)
    if flag:
        print(f"{prog}: error: {flag} is not accepted; put the token in the HF_TOKEN environment variable",
              file=sys.stderr)
        return 2
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], allow_abbrev=False)
    parser.add_argument("--data_name", required=True,
                        help=f"dataset: Synthyra/DATA_NAME_packed, e.g. {', '.join(KNOWN_DATASETS)}")
    parser.add_argument("--num_chunks", type=int, required=True, help="train shards to fetch (~1e8 tokens each)")
    parser.add_argument("--output_dir", default=None, help="default: data/DATA_NAME in the repository")
    args = parser.parse_args(argv)
    if args.num_chunks < 0:
        parser.error("--num_chunks must be >= 0")
    if not args.data_name or "/" in args.data_name:
        parser.error("--data_name is a dataset name such as omg_prot50, not a repo id")
    output_dir = Path(args.output_dir) if args.output_dir else REPO_ROOT / "data" / args.data_name

    # huggingface_hub logs a warning per retry; the one-line error below says all the user needs.
    from huggingface_hub.utils import logging as hf_logging
    hf_logging.set_verbosity_error()
    try:
        paths = download(args.data_name, args.num_chunks, output_dir, os.environ.get("HF_TOKEN"))
    except (DownloadError, OSError) as e:
        print(f"{prog}: error: {e}", file=sys.stderr)
        return 1
    print(f"{len(paths)} shards ready in {output_dir}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
