import sluice_module_that_does_not_exist  # noqa: F401

import sluice

app = sluice.App("broken")
