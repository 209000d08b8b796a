"""`edgetune keygen` and `edgetune sign`: Ed25519 keys, and signatures on bundles and adapters."""

import argparse
from pathlib import Path

from edgetune.cli.common import add_command
from edgetune.common.errors import EdgetuneError
from edgetune.common.names import ADAPTER_CONFIG, MANIFEST


def run_keygen(args: argparse.Namespace) -> None:
    """Write a private key and its .pub, and say where."""
    from edgetune.common.trust import keygen

    pub = keygen(args.keyfile)
    print(f"wrote {args.keyfile} (private, mode 0600) and {pub} (add it to the devices' trusted keys)")


def run_sign(args: argparse.Namespace) -> None:
    """Sign a bundle, a merged model folder or an adapter folder, after checking it."""
    from edgetune.common.bundle import sign_manifest
    from edgetune.common.peft import read_adapter_config, sign_adapter

    folder = Path(args.folder)
    if (folder / MANIFEST).exists():
        signer = sign_manifest(folder, args.key)
    elif (folder / ADAPTER_CONFIG).exists():
        read_adapter_config(folder)
        signer = sign_adapter(folder, args.key)
    else:
        raise EdgetuneError(f"{folder}: neither a bundle ({MANIFEST}) nor an adapter folder ({ADAPTER_CONFIG})")
    print(f"signed {folder} with {signer}")


def register(sub) -> None:
    """Add `keygen` and `sign`."""
    p = add_command(sub, "keygen", run_keygen, help="make an Ed25519 key pair to sign bundles and adapters with")
    p.add_argument("keyfile", help="private key file to create (KEYFILE.pub gets the public key)")

    p = add_command(sub, "sign", run_sign, help="sign a bundle, merged model or adapter folder")
    p.add_argument("folder")
    p.add_argument("--key", required=True, help="private key file (edgetune keygen)")
