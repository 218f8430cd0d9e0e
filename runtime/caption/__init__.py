"""Offline captioning: the error-isolating batcher keyed by id, the resumable JSONL job on top, and the same job on
Ray Data actors (caption.on_ray, imported on its own: it needs moai-edge[ray])."""

from .captioner import CaptionRecord, Captioner
from .inputs import InputScan, collect_inputs
from .job import CaptionJob, JobSummary, run_caption_job
from .output import read_records, recorded_ids

__all__ = ["CaptionJob", "CaptionRecord", "Captioner", "InputScan", "JobSummary", "collect_inputs", "read_records",
           "recorded_ids", "run_caption_job"]
