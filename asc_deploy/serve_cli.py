"""``asc-serve``: serve an exported model through Triton Inference Server (PyTriton; the ``serve``
extra). See :mod:`asc_deploy.serve` for the contract; clients: :mod:`asc_deploy.client`,
``asc-predict --server URL``."""

from __future__ import annotations

import sys

import click

from asc_deploy.errors import AscError
from asc_deploy.extras import require_extras
from asc_deploy.ort_runner import SessionConfig
from asc_deploy.runtime import DEFAULT_TTA_PASSES, Classifier
from asc_deploy.serve import SERVE_EXTRA, ServerConfig, python_library_dir, serve
from asc_deploy.triton_model import MAX_QUEUE_DELAY_US, MODEL_NAME


@click.command(context_settings={"help_option_names": ["-h", "--help"]})
@click.option("--model", "model_path", required=True, type=click.Path(), help="ONNX model written by asc-export (single pass or TTA).")
@click.option("--host", default="127.0.0.1", show_default=True, help="Address to listen on (0.0.0.0: every interface).")
@click.option("--http-port", default=8000, show_default=True)
@click.option("--grpc-port", default=8001, show_default=True)
@click.option("--metrics-port", default=8002, show_default=True)
@click.option("--max-batch-size", default=32, show_default=True, help="Most same-length clips Triton batches into one call.")
@click.option("--max-queue-delay-us", default=MAX_QUEUE_DELAY_US, show_default=True,
              help="Most microseconds Triton holds a request to fill a batch.")
@click.option("--provider", default="cpu", show_default=True, type=click.Choice(["cpu", "cuda"]))
@click.option("--tta-passes", default=DEFAULT_TTA_PASSES, show_default=True, type=click.IntRange(min=1), help="SpecAugment passes of a TTA model.")
@click.option("--seed", default=0, show_default=True, help="Seed of the TTA stripes.")
@click.option("--threads", default=0, show_default=True, type=click.IntRange(min=0), help="onnxruntime intra-op threads (0: one per core).")
def main(model_path: str, host: str, http_port: int, grpc_port: int, metrics_port: int, max_batch_size: int,
         max_queue_delay_us: int, provider: str, tta_passes: int, seed: int, threads: int) -> None:
    """Serve MODEL as Triton model "asc_sp4asc" until SIGTERM or Ctrl-C."""
    try:
        require_extras("asc-serve", SERVE_EXTRA)
        python_library_dir()
        config = ServerConfig(host, http_port, grpc_port, metrics_port, max_batch_size, max_queue_delay_us)
        classifier = Classifier(model_path, provider=provider, tta_passes=tta_passes, seed=seed,
                                session=SessionConfig(intra_op_threads=threads))

        def ready() -> None:
            click.echo(f"asc-serve: serving {model_path} as {MODEL_NAME} ({classifier.metadata.variant}) on "
                       f"http {host}:{http_port}, grpc {host}:{grpc_port}, metrics {host}:{metrics_port}", err=True)

        stopped_by_signal = serve(classifier, config, ready)
    except (AscError, ValueError) as err:
        click.echo(f"asc-serve: error: {err}", err=True)
        sys.exit(1)
    if not stopped_by_signal:
        click.echo("asc-serve: error: the Triton server or the model stopped unexpectedly", err=True)
        sys.exit(1)
    click.echo("asc-serve: stopped", err=True)


if __name__ == "__main__":
    main()
