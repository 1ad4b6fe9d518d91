"""`vgg-mobile sample-data`: the built-in sample dataset."""

from __future__ import annotations

from pathlib import Path

import click

from vgg_mobile.cli.common import COUNT, default
from vgg_mobile.data.sample import write_sample_data


@click.command("sample-data")
@click.argument("out", type=click.Path(path_type=Path))
@click.option("--images-per-class", default=default(write_sample_data, "images_per_class"),
              show_default=True, type=COUNT,
              help="Images in each class.")
@click.option("--image-size", default=default(write_sample_data, "image_size"), show_default=True,
              type=COUNT,
              help="Side of each image in pixels.")
@click.option("--seed", default=default(write_sample_data, "seed"), show_default=True,
              help="The same seed writes the same files.")
@click.option("--force", is_flag=True, help="Replace OUT if it exists.")
def sample_data_cmd(out, images_per_class, image_size, seed, force):
    """Write the built-in sample dataset (4 classes of shapes, JPEG and PNG) to OUT."""
    from vgg_mobile.data.sample import SAMPLE_CLASSES

    write_sample_data(out, images_per_class, image_size, seed, overwrite=force)
    click.echo(f"wrote {len(SAMPLE_CLASSES) * images_per_class} images in "
               f"{len(SAMPLE_CLASSES)} classes ({', '.join(SAMPLE_CLASSES)}) to {out}")
