"""Artifact directories: manifest.json, the IREE parameter archive, and the atomic writer."""

from .bundle import write_bundle
from .describe import ArtifactReport, describe, describe_report, inspect_artifact
from .manifest import (
    ABI_VERSION,
    FORMAT_VERSION,
    MANIFEST_NAME,
    PARAMS_NAME,
    VMFB_NAME,
    KVInfo,
    Manifest,
    ModelInfo,
    TargetInfo,
    read_manifest,
    sha256_file,
)
from .params import load_params, read_params, write_params

__all__ = ["ArtifactReport", "describe", "describe_report", "inspect_artifact", "ABI_VERSION", "FORMAT_VERSION", "MANIFEST_NAME", "PARAMS_NAME", "VMFB_NAME", "KVInfo", "Manifest",
           "ModelInfo", "TargetInfo", "read_manifest", "sha256_file", "write_bundle", "load_params",
           "read_params", "write_params"]
