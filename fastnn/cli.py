"""python -m fastnn: report the backends."""

import fastnn


def main(argv=None):
    print(f"fastnn {fastnn.__version__}")
    print("available backends:", ", ".join(fastnn.available_backends()))
    for name, why in fastnn.unavailable_backends().items():
        print(f"  {name} unavailable: {why}")
    return 0
