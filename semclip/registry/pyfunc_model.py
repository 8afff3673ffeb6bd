"""The model-from-code file MLflow logs with every semclip version (MLflow "models from code").

``Registry.log_version`` passes this file's path as ``python_model``; MLflow copies it into
the logged model and, on ``mlflow.pyfunc.load_model``, runs it to get the python model
instead of unpickling a ``python_model.pkl``. So loading a registered version executes only
this file and the semclip code logged beside it, never a pickle that anyone with write access
to the artifact store could have planted. Keep it to the one ``set_model`` call: it is
executed as a standalone script, not imported as part of the package.
"""

from mlflow.models import set_model

from semclip.registry.pyfunc import SemclipPyfunc

set_model(SemclipPyfunc())
