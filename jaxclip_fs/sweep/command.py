"""``jaxclip-fs run``: flags -> feature source + sweep config -> :func:`run_sweep` -> report.

Two ways to get features:

* ``--dataset D1,D2 --backbone B --weights W`` -- extracted here
  (:class:`ExtractedFeatures`) into ``DIR/features/<dataset>.npz``, through
  the content-addressed feature cache, for the union of the directory's
  seeds at its largest shot count; a rerun reuses the file;
* ``--features F1.npz F2.npz`` -- feature files made elsewhere (bring your
  own); the dataset name comes from each file's ``meta``.

``--ood imagenet_v2,imagenet_sketch`` (with ``--dataset imagenet``) also
scores every ImageNet fit on those test sets (:mod:`~jaxclip_fs.sweep.ood`).
"""

from __future__ import annotations

import os
import sys
from typing import Sequence

from jaxclip_fs import methods as methods_lib
from jaxclip_fs.errors import ConfigError
from jaxclip_fs.features import featfile
from jaxclip_fs.features.command import RANDOM_BANNER, parse_scale
from jaxclip_fs.sweep import ood as ood_lib
from jaxclip_fs.sweep import outdir
from jaxclip_fs.sweep.cells import parse_int_list, parse_names
from jaxclip_fs.sweep.engine import SweepConfig, SweepResult, run_sweep
from jaxclip_fs.sweep.image_programs import PAIRED_METHODS


def covers(fs: featfile.FeatureSet, shots: int, seeds: Sequence[int]) -> bool:
    """Does the feature file hold the ``shots``-shot sets of every seed in ``seeds``?"""
    return all(s in fs.fewshot and fs.fewshot[s].shape[1] >= shots for s in seeds)


class ExtractedFeatures:
    """Everything ``run`` computes from images with one CLIP: feature files (once, cached, into
    ``DIR/features``), OOD test features, TA++/TX++'s paired features and LDC's programs.

    The CLIP is loaded on first need only, so a resumed sweep whose features
    exist never loads it.
    """

    def __init__(self, out_dir: str, backbone: str, weights: str, *, data_root: str | None = None,
                 source: str = "coop", views: int = 10, aug_scale=(0.5, 1.0), aug_seed: int = 0,
                 dtype: str = "float32", batch_size: int = 64, cache_dir: str | None = None,
                 use_cache: bool = True, workers: int | None = None, progress: bool = True,
                 writer: bool = True, banner: bool = True, imo_adapters: str | None = None):
        self.out_dir, self.backbone, self.weights = out_dir, backbone, weights
        self.data_root, self.source = data_root, source
        self.options = dict(views=views, aug_scale=tuple(aug_scale), aug_seed=aug_seed, dtype=dtype,
                            batch_size=batch_size, cache_dir=cache_dir, use_cache=use_cache,
                            workers=workers, progress=progress)
        self.writer, self.banner = writer, banner
        self.imo_adapters = imo_adapters
        self._clip = None
        self._datasets: dict = {}

    def clip(self):
        if self._clip is None:
            from jaxclip_fs.convert import load_clip

            self._clip = load_clip(self.backbone, self.weights)
            if self._clip.is_random and self.banner:
                print(RANDOM_BANNER.format(weights_id=self._clip.weights_id), file=sys.stderr)
        return self._clip

    def dataset(self, name: str):
        """The registry dataset ``name`` (loaded once)."""
        if name not in self._datasets:
            from jaxclip_fs.data import get_dataset

            self._datasets[name] = get_dataset(name, self.data_root, source=self.source)
        return self._datasets[name]

    def __call__(self, dataset: str, shots: int, seeds: Sequence[int]) -> featfile.FeatureSet:
        path = outdir.features_path(self.out_dir, dataset)
        if os.path.exists(path):
            fs = featfile.load(path)
            if covers(fs, shots, seeds):
                return fs
        from jaxclip_fs.features.extract import extract_features, save_extraction

        extraction = extract_features(self.dataset(dataset), self.clip(), shots=shots,
                                      seeds=tuple(seeds), **self.options)
        if self.writer:
            save_extraction(path, extraction)
        return extraction.features

    def ood(self, name: str, parent: featfile.FeatureSet) -> ood_lib.OODSet:
        """The test features of OOD set ``name`` (extracted once into ``DIR/features``)."""
        path = outdir.ood_features_path(self.out_dir, name)
        if os.path.exists(path):
            return ood_lib.load_ood(path)
        found = ood_lib.extract_ood(
            self.dataset(name), self.clip(), parent.num_classes,
            **{k: self.options[k]
               for k in ("dtype", "batch_size", "cache_dir", "use_cache", "workers", "progress")})
        if self.writer:
            ood_lib.save_ood(path, found)
        return found

    def image_options(self, config: SweepConfig):
        """The image pipeline's options for this sweep (views, caches, selection protocol)."""
        from jaxclip_fs.sweep.image_methods import ImageOptions

        o = self.options
        return ImageOptions(tap_cache_views=o["views"], imo_adapters=self.imo_adapters,
                            views=o["views"], aug_seed=o["aug_seed"], val_policy=config.val_policy,
                            select_on_test=config.select_on_test, batch_size=o["batch_size"],
                            cache_dir=o["cache_dir"], use_cache=o["use_cache"],
                            workers=o["workers"], progress=o["progress"],
                            devices=config.devices)

    def paired(self, dataset: str, shots: int, seeds: Sequence[int]) -> featfile.FeatureSet:
        """TA++ / TX++'s ``[adapted | original]`` features (through the feature cache)."""
        from jaxclip_fs.sweep.image_methods import imo_paired_features

        o = self.options
        return imo_paired_features(self.dataset(dataset), self.clip(), self.imo_adapters,
                                   shots=shots, seeds=tuple(seeds), views=o["views"],
                                   aug_seed=o["aug_seed"], batch_size=o["batch_size"],
                                   cache_dir=o["cache_dir"], use_cache=o["use_cache"],
                                   workers=o["workers"], progress=o["progress"])

    def run_image(self, method: str, dataset: str, shots: Sequence[int], seeds: Sequence[int],
                  hp, config: SweepConfig) -> list:
        """LDC's program on ``dataset`` for the product of ``shots`` and ``seeds``."""
        from jaxclip_fs.sweep.image_methods import run_image_method

        return run_image_method(method, self.dataset(dataset), self.clip(), shots=shots,
                                seeds=seeds, hp=hp, options=self.image_options(config),
                                log=None)


class FeatureFiles:
    """Feature source over given feature files, keyed by the dataset named in their meta."""

    def __init__(self, paths: Sequence[str]):
        self.files: dict[str, featfile.FeatureSet] = {}
        for path in paths:
            fs = featfile.load(path)
            name = str(fs.meta.get("dataset") or os.path.splitext(os.path.basename(path))[0])
            if name in self.files:
                raise ConfigError(f"--features: two files for dataset '{name}' ({path})")
            self.files[name] = fs
        for key in ("backbone", "weights"):
            values = {str(fs.meta.get(key, "unknown")) for fs in self.files.values()}
            if len(values) > 1:
                raise ConfigError(
                    f"--features: the files disagree on {key} ({', '.join(sorted(values))})")

    @property
    def datasets(self) -> tuple[str, ...]:
        return tuple(self.files)

    def settings(self) -> dict:
        first = next(iter(self.files.values()))
        return {"--backbone": first.meta.get("backbone", "unknown"),
                "--weights": first.meta.get("weights", "unknown")}

    def __call__(self, dataset: str, shots: int, seeds: Sequence[int]) -> featfile.FeatureSet:
        del shots, seeds  # checked when the tasks are built (one-line DataError)
        return self.files[dataset]


def selected_methods(text: str, images: bool = False, imo: bool = False) -> tuple[str, ...]:
    """``--method`` -> names; ``all`` = every registered method these inputs can run.

    Args:
      images: image methods can run (features from images, no OOD sets).
      imo: IMO adapters are given (TA++ / TX++ can run).

    Raises:
      ConfigError: empty, or an unknown method.
    """
    if text.strip() != "all":
        names = parse_names(text, "--method")
        for name in names:
            methods_lib.get(name)  # unknown names fail here, before any work
        return names
    return tuple(n for n in methods_lib.names() if _runnable(n, images, imo))


def _runnable(name: str, images: bool, imo: bool) -> bool:
    """Whether ``--method all`` includes the registered method ``name`` for these inputs."""
    if not methods_lib.get(name).needs_images:
        return True
    return images and (imo or name not in PAIRED_METHODS)


def start_distributed(args) -> None:
    """``--distributed``: multi-host JAX before anything touches the devices."""
    if args.distributed:
        from jaxclip_fs.sweep.sharding import initialize_distributed

        initialize_distributed(args.coordinator, args.num_processes, args.process_id)
    elif args.coordinator or args.num_processes is not None or args.process_id is not None:
        raise ConfigError("--coordinator / --num-processes / --process-id need --distributed")


def run_command(args) -> int:
    """``jaxclip-fs run`` (flags as in ``cli._add_run``)."""
    start_distributed(args)
    from jaxclip_fs.sweep.sharding import is_writer

    writer = is_writer()
    if bool(args.dataset) == bool(args.features):
        raise ConfigError("give either --dataset (extract here) or --features FILE.npz ...")
    if args.features:
        source = FeatureFiles(args.features)
        datasets, settings = source.datasets, source.settings()
    else:
        if not args.backbone or not args.weights:
            raise ConfigError("--dataset needs --backbone and --weights (or use --features)")
        from jaxclip_fs.clip.variants import canonical_name

        datasets = parse_names(args.dataset, "--dataset")
        backbone = canonical_name(args.backbone)
        aug_scale = parse_scale(args.aug_scale)
        source = ExtractedFeatures(
            args.out, backbone, args.weights, data_root=args.data_root, source=args.source,
            views=args.views, aug_scale=aug_scale, aug_seed=args.aug_seed, dtype=args.dtype,
            batch_size=args.batch_size, cache_dir=args.cache_dir, use_cache=not args.no_cache,
            workers=args.workers, progress=not args.quiet, writer=writer,
            imo_adapters=args.imo_adapters)
        settings = {"--backbone": backbone, "--weights": args.weights, "--views": args.views,
                    "--aug-scale": list(aug_scale), "--aug-seed": args.aug_seed,
                    "--dtype": args.dtype, "--source": args.source,
                    "--imo-adapters": args.imo_adapters}
    config = SweepConfig(
        methods=selected_methods(args.method, images=not (args.features or args.ood),
                                 imo=bool(args.imo_adapters)),
        datasets=tuple(datasets),
        shots=parse_int_list(args.shots, "--shots", 1),
        seeds=parse_int_list(args.seeds, "--seeds", 0),
        val_policy=args.val_policy, select_on_test=args.select_on_test, hp=tuple(args.hp),
        fuse_datasets=args.fuse_datasets, program_per_shots=args.program_per_shots,
        save_params=args.save_params, devices=args.devices,
        ood=parse_names(args.ood, "--ood") if args.ood else ())
    if config.ood and args.features:
        raise ConfigError("--ood needs --dataset (the OOD test sets are extracted here)")
    images = {} if args.features else dict(
        ood_features=source.ood, image_runner=source.run_image,
        paired_features=source.paired if args.imo_adapters else None)
    result = run_sweep(args.out, config, source, settings=settings, argv=sys.argv[1:],
                       progress=not args.quiet, **images)
    if writer and not args.no_report:
        print_report(result)
    return 0


def print_report(result: SweepResult) -> None:
    """Writes ``DIR/report`` and prints its main tables."""
    from jaxclip_fs.report.write import write_report

    files = write_report(result.out_dir)
    print(files.summary)
    print(f"report: {files.markdown} ({len(files.plots)} plots in {files.out_dir})")
