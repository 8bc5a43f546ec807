"""`aa-studio`: serve the studio page (127.0.0.1 unless --host)."""
from __future__ import annotations

import sys
from pathlib import Path

import click

from aa_runtime.console import fail, quiet_libraries
from aa_runtime.errors import AAError


@click.command(context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 110})
@click.option("--base", default=None, help="aa bundle or SD1.5 folder [models/aa-tiny].")
@click.option("--motion-module", default=None, help="AnimateDiff motion module, for an SD1.5 --base.")
@click.option("--library", type=click.Path(path_type=Path), default=None,
              help="Identity adapters folder [CACHE/studio/library].")
@click.option("--host", default="127.0.0.1", show_default=True,
              help="Interface to serve on; 0.0.0.0 exposes the page to your network.")
@click.option("--port", type=int, default=None, help="[7860, or the next free one].")
@click.option("--max-upload-mb", default=200.0, show_default=True)
@click.option("--max-seconds", default=120.0, show_default=True, help="Longest reference or driving video.")
def main(base, motion_module, library, host, port, max_upload_mb, max_seconds):
    """Learn a person from a video, then direct them, in a local web page."""
    quiet_libraries()
    try:
        from .app import StudioConfig, launch

        cfg = StudioConfig(base=base, motion_module=motion_module, library=library, max_upload_mb=max_upload_mb,
                           max_seconds=max_seconds)
    except AAError as e:
        fail(e)
    except ImportError as e:
        fail(AAError("aa-studio", f"{e.name or e} is not installed", "pip install -e .[studio] (gradio)"))
    click.echo(f"library: {cfg.library}", err=True)
    launch(cfg, host=host, port=port)


if __name__ == "__main__":
    sys.exit(main())
