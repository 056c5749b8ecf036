# Would run on load with trust_remote_code: true; tests/test_bad_inputs.py checks it never does.
from pathlib import Path

from transformers import PretrainedConfig

Path(__file__).with_name("RAN").write_text("custom code ran")


class CustomConfig(PretrainedConfig):
    model_type = "vlsweep_custom"
