import subprocess
import sys

import greenmaas


def test_all_names_resolve():
    public = {n for n in dir(greenmaas) if not n.startswith("_")} - {"annotations", "errors", "import_module", "TYPE_CHECKING"}
    for name in greenmaas.__all__:
        assert getattr(greenmaas, name) is not None, name
    # every public attribute is promised in __all__ (modules loaded as a side effect excepted)
    import types

    extra = {n for n in public if not isinstance(getattr(greenmaas, n), types.ModuleType)} - set(greenmaas.__all__)
    assert extra == set()


def test_import_is_cheap_and_side_effect_free():
    code = (
        "import sys, logging, threading\n"
        "import greenmaas\n"
        "heavy = [m for m in ('pynvml', 'torch', 'pandas', 'sqlalchemy', 'codecarbon', 'numpy', 'subprocess_marker') if m in sys.modules]\n"
        "assert heavy == [], heavy\n"
        # The framework integrations import their framework only when their module is imported;
        # the notebook renderers import pandas only when a frame is asked for; MLflow is imported
        # when a run is logged.
        "import greenmaas.integrations, greenmaas.notebook, greenmaas.integrations.mlflow\n"
        "greenmaas.load_ipython_extension\n"
        "frameworks = ('transformers', 'pytorch_lightning', 'lightning', 'mlflow', 'IPython', 'torch', 'pandas')\n"
        "loaded = [m for m in frameworks if m in sys.modules]\n"
        "assert loaded == [], loaded\n"
        "assert logging.getLogger().handlers == [], 'root logging configured'\n"
        "assert logging.getLogger('greenmaas').handlers == []\n"
        "assert threading.active_count() == 1\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True)
