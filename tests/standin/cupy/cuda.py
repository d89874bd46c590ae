"""cupy.cuda for the stand-in: one device, synchronous, nothing to wait for."""


class _Runtime:
    @staticmethod
    def getDeviceCount():
        return 1

    @staticmethod
    def runtimeGetVersion():
        return 12040

    @staticmethod
    def driverGetVersion():
        return 12040

    @staticmethod
    def deviceSynchronize():
        """Nothing to wait for: the stand-in computes synchronously."""

    @staticmethod
    def getDeviceProperties(device_id):
        if device_id != 0:
            raise RuntimeError("cudaErrorInvalidDevice: invalid device ordinal")
        return {"name": b"NumPy stand-in device", "totalGlobalMem": 1 << 34,
                "major": 9, "minor": 0, "multiProcessorCount": 1}


runtime = _Runtime()


class Device:
    def __init__(self, device=0):
        if not 0 <= int(device) < runtime.getDeviceCount():
            raise RuntimeError("cudaErrorInvalidDevice: invalid device ordinal")
        self.id = int(device)

    def use(self):
        pass

    def synchronize(self):
        pass

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        return False


class Stream:
    null = None

    def __init__(self, non_blocking=False):
        pass

    def synchronize(self):
        pass


def get_current_stream():
    return Stream()
