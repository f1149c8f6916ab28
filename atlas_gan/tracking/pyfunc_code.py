"""MLflow "models from code" entry point: MLflow runs this file to build the pyfunc when it loads the model."""

from mlflow.models import set_model

from atlas_gan.tracking.generator_model import GeneratorModel

set_model(GeneratorModel())
