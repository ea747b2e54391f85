"""`encom key`: the SSH public keys allowed to `git push`."""

from __future__ import annotations

from pathlib import Path

import click

from encom.api.types import Key
from encom.cli.context import call, cluster_option, current_cluster
from encom.cli.output import CliError, print_table

DEFAULT_KEY_FILES = ("id_ed25519.pub", "id_rsa.pub")


def default_key_file(home: Path | None = None) -> Path:
    ssh_dir = (home or Path.home()) / ".ssh"
    for name in DEFAULT_KEY_FILES:
        if (ssh_dir / name).is_file():
            return ssh_dir / name
    looked = ", ".join(str(ssh_dir / n) for n in DEFAULT_KEY_FILES)
    raise CliError(f"no public key found (looked for {looked}); give its path: encom key add <file>")


def read_public_key(path: Path) -> str:
    try:
        text = path.read_text().strip()
    except (OSError, UnicodeDecodeError) as exc:
        raise CliError(f"cannot read {path}: {exc}") from exc
    if "PRIVATE KEY" in text:
        raise CliError(f"{path} is a private key; give the public one ({path}.pub)")
    return text


@click.group("key", invoke_without_command=True)
@cluster_option
@click.pass_context
def key_group(ctx: click.Context) -> None:
    """List SSH keys, or manage them with a subcommand."""
    if ctx.invoked_subcommand is None:
        keys: list[Key] = call(current_cluster(), lambda c: c.list_keys())
        print_table(["FINGERPRINT", "COMMENT"], [[k.fingerprint, k.comment] for k in keys])


@key_group.command("add")
@cluster_option
@click.argument("path", type=click.Path(path_type=Path), required=False)
def key_add(path: Path | None) -> None:
    """Allow an SSH public key (default ~/.ssh/id_ed25519.pub, else ~/.ssh/id_rsa.pub)."""
    cluster = current_cluster()
    text = read_public_key(path or default_key_file())
    key = call(cluster, lambda c: c.add_key(text))
    click.echo(f"Key {key.fingerprint} added.")


@key_group.command("remove")
@cluster_option
@click.argument("fingerprint")
def key_remove(fingerprint: str) -> None:
    """Remove a key by its fingerprint."""
    call(current_cluster(), lambda c: c.remove_key(fingerprint))
    click.echo(f"Key {fingerprint} removed.")
