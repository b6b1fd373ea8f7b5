"""Speech detection: is this audio speech, and where? One detector (Silero VAD v6 on
onnxruntime, numpy only: the ingress never imports torch) for the silence guard, the
split of long audio at pauses and live turns.
"""

from serve_app.speech.detector import SpeechAnalysis, SpeechDetector
from serve_app.speech.options import SpeechOptions
from serve_app.speech.turns import TurnDetector, TurnEvent

__all__ = ["SpeechAnalysis", "SpeechDetector", "SpeechOptions", "TurnDetector", "TurnEvent"]
