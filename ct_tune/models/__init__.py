"""Models: built-in small ResNets, any torchvision or timm classifier, checkpoint files and user factories.

A model is served as a :class:`LoadedModel`: the raw network (its own module paths, so ``layer1.0`` stays
``layer1.0`` for beta profiles) next to an :class:`InputSpec` that says what the network is fed: square side,
channels, and the mean/std applied *inside* the forward path. Data is served in pixel space ([0, 1]), so
adversarial attacks and any other pixel-space tool differentiate through the normalisation.
"""

from ct_tune.models._builtin import ACTIVATIONS, DEFAULT_MODEL, check_activation
from ct_tune.models._checkpoints import CHECKPOINT_FORMAT, save_checkpoint
from ct_tune.models._create import check_model_name, create_model, load_checkpoint
from ct_tune.models._input_spec import InputSpec
from ct_tune.models._loaded import LoadedModel
from ct_tune.models._registry import list_models, register_model
from ct_tune.models._user import load_user_model

__all__ = [
    "ACTIVATIONS",
    "CHECKPOINT_FORMAT",
    "DEFAULT_MODEL",
    "InputSpec",
    "LoadedModel",
    "check_activation",
    "check_model_name",
    "create_model",
    "list_models",
    "load_checkpoint",
    "load_user_model",
    "register_model",
    "save_checkpoint",
]
