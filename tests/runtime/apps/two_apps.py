import sluice

first = sluice.App("first")
second = sluice.App("second")
