"""Tiny nnU-Net v2 trained-model folders, built with nnU-Net's own code (no downloads).

The plans are a minimal ``plans.json`` that nnU-Net's `PlansManager` accepts (the same keys its
experiment planner writes); the networks come from its `get_network_from_plans`; checkpoints are
saved the way `nnUNetTrainer.save_checkpoint` saves them (network weights, optimizer state, the
training log with numpy scalars, init args with a ``torch.device``, trainer name and allowed
mirroring axes).
"""

from __future__ import annotations

import json
from pathlib import Path

CLASSES = ["background", "liver", "tumour"]


def plans_for(spatial_dims: int, patch: tuple[int, ...], features=(2, 4)) -> tuple[str, dict]:
    """Return ``(configuration name, plans dict)`` for a 2-stage PlainConvUNet."""
    n, d = len(features), spatial_dims
    config = {
        "data_identifier": f"nnUNetPlans_{d}d",
        "preprocessor_name": "DefaultPreprocessor",
        "batch_size": 2,
        "patch_size": list(patch),
        "median_image_size_in_voxels": list(patch),
        "spacing": [1.0] * d,
        "normalization_schemes": ["ZScoreNormalization"],
        "use_mask_for_norm": [False],
        "resampling_fn_data": "resample_data_or_seg_to_shape",
        "resampling_fn_seg": "resample_data_or_seg_to_shape",
        "resampling_fn_data_kwargs": {
            "is_seg": False, "order": 3, "order_z": 0, "force_separate_z": None,
        },
        "resampling_fn_seg_kwargs": {
            "is_seg": True, "order": 1, "order_z": 0, "force_separate_z": None,
        },
        "resampling_fn_probabilities": "resample_data_or_seg_to_shape",
        "resampling_fn_probabilities_kwargs": {
            "is_seg": False, "order": 1, "order_z": 0, "force_separate_z": None,
        },
        "architecture": {
            "network_class_name": "dynamic_network_architectures.architectures.unet.PlainConvUNet",
            "arch_kwargs": {
                "n_stages": n,
                "features_per_stage": list(features),
                "conv_op": f"torch.nn.modules.conv.Conv{d}d",
                "kernel_sizes": [[3] * d] * n,
                "strides": [[1] * d] + [[2] * d] * (n - 1),
                "n_conv_per_stage": [1] * n,
                "n_conv_per_stage_decoder": [1] * (n - 1),
                "conv_bias": True,
                "norm_op": f"torch.nn.modules.instancenorm.InstanceNorm{d}d",
                "norm_op_kwargs": {"eps": 1e-5, "affine": True},
                "dropout_op": None,
                "dropout_op_kwargs": None,
                "nonlin": "torch.nn.LeakyReLU",
                "nonlin_kwargs": {"inplace": True},
            },
            "_kw_requires_import": ["conv_op", "norm_op", "dropout_op", "nonlin"],
        },
        "batch_dice": False,
    }  # fmt: skip
    name = "2d" if d == 2 else "3d_fullres"
    plans = {
        "dataset_name": "Dataset999_Tiny",
        "plans_name": "nnUNetPlans",
        "original_median_spacing_after_transp": [1.0, 1.0, 1.0],
        "original_median_shape_after_transp": [8, 16, 16],
        "image_reader_writer": "SimpleITKIO",
        "transpose_forward": [0, 1, 2],
        "transpose_backward": [0, 1, 2],
        "configurations": {name: config},
        "experiment_planner_used": "ExperimentPlanner",
        "label_manager": "LabelManager",
        "foreground_intensity_properties_per_channel": {
            "0": {
                "max": 3.0, "mean": 0.5, "median": 0.5, "min": -3.0,
                "percentile_00_5": -2.5, "percentile_99_5": 2.5, "std": 1.0,
            }
        },
    }  # fmt: skip
    return name, plans


def build_nnunet_folder(
    root,
    *,
    spatial_dims: int = 3,
    patch: tuple[int, ...] | None = None,
    folds: int = 2,
    final_scale: float = 0.1,
    features=(2, 4),
    labels: dict | None = None,
    extra: dict | None = None,
) -> Path:
    """Write ``root/nnUNetTrainer__nnUNetPlans__<config>`` with ``folds`` seeded folds.

    ``final_scale`` shrinks the segmentation head (moderate logits); ``extra`` is merged into
    every checkpoint dict (e.g. a malicious object for the safety test).
    """
    import numpy as np
    import torch
    from nnunetv2.utilities.get_network_from_plans import get_network_from_plans
    from nnunetv2.utilities.plans_handling.plans_handler import PlansManager

    if patch is None:
        patch = (8, 8, 8) if spatial_dims == 3 else (16, 16)
    config, plans = plans_for(spatial_dims, patch, features)
    folder = Path(root) / f"nnUNetTrainer__nnUNetPlans__{config}"
    folder.mkdir(parents=True, exist_ok=True)
    labels = labels or {name: i for i, name in enumerate(CLASSES)}
    dataset = {
        "channel_names": {"0": "MRI"},
        "labels": labels,
        "numTraining": 4,
        "file_ending": ".nii.gz",
    }
    (folder / "plans.json").write_text(json.dumps(plans, indent=1))
    (folder / "dataset.json").write_text(json.dumps(dataset, indent=1))
    cm = PlansManager(plans).get_configuration(config)
    n_out = len([k for k in labels if k != "ignore"])
    for fold in range(folds):
        torch.manual_seed(100 + fold)
        net = get_network_from_plans(
            cm.network_arch_class_name,
            cm.network_arch_init_kwargs,
            cm.network_arch_init_kwargs_req_import,
            1,
            n_out,
            deep_supervision=False,
        )
        with torch.no_grad():
            for name, p in net.named_parameters():
                if "seg_layers" in name:
                    p.mul_(final_scale)
        optimizer = torch.optim.SGD(net.parameters(), lr=0.01, momentum=0.99, nesterov=True)
        checkpoint = {
            "network_weights": net.state_dict(),
            "optimizer_state": optimizer.state_dict(),
            "grad_scaler_state": None,
            "logging": {
                "mean_fg_dice": [np.float64(0.5)],
                "ema_fg_dice": [np.float64(0.5)],
                "dice_per_class_or_region": [[np.float64(0.4), np.float64(0.6)]],
                "train_losses": [np.float64(-0.3)],
                "epoch_start_timestamps": [1.7e9],
            },
            "_best_ema": np.float64(0.5),
            "current_epoch": 1,
            "init_args": {
                "plans": plans,
                "configuration": config,
                "fold": fold,
                "dataset_json": dataset,
                "device": torch.device("cpu"),
            },
            "trainer_name": "nnUNetTrainer",
            "inference_allowed_mirroring_axes": tuple(range(spatial_dims)),
            **(extra or {}),
        }
        (folder / f"fold_{fold}").mkdir(exist_ok=True)
        torch.save(checkpoint, folder / f"fold_{fold}" / "checkpoint_final.pth")
    return folder


def nnunet_reference(folder, image, *, folds=(0, 1), use_mirroring: bool = True, spacing=None):
    """nnU-Net's own ``predict_single_npy_array`` probabilities ``(K, *S)`` for ``image`` (C, *S)
    (2D images are given to nnU-Net as one plane with spacing 999 across, its convention)."""
    import contextlib
    import io

    import numpy as np
    import torch
    from nnunetv2.inference.predict_from_raw_data import nnUNetPredictor

    with contextlib.redirect_stdout(io.StringIO()):
        predictor = nnUNetPredictor(
            device=torch.device("cpu"), use_mirroring=use_mirroring, allow_tqdm=False
        )
        predictor.initialize_from_trained_model_folder(str(folder), tuple(folds))
    arr = np.asarray(image, np.float32)
    two_d = arr.ndim == 3
    spacing = list(spacing or [1.0] * (arr.ndim - 1))
    if two_d:
        arr, spacing = arr[:, None], [999.0, *spacing]
    _, probs = predictor.predict_single_npy_array(arr, {"spacing": spacing}, None, None, True)
    return probs[:, 0] if two_d else probs
