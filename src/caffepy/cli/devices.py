"""Which device the command line runs on: ``-gpu`` (Caffe's get_gpus), the CPU/GPU switch, and
the GPU facts the commands print.  CuPy is optional: it is imported only when a GPU is asked
about, and its absence is a clear error rather than an ImportError."""
from .. import backend
from ..errors import CliError

GPU_BACKEND_HELP = ("caffepy's GPU backend needs CuPy and an NVIDIA GPU (pip install "
                    "'caffepy[gpu]' on a machine with CUDA)")


def gpu_device_count():
    """How many GPUs CuPy sees; None when CuPy is not installed."""
    try:
        import cupy
    except ImportError:
        return None
    try:
        return int(cupy.cuda.runtime.getDeviceCount())
    except Exception:
        return 0


def get_gpus(flags):
    """The device ids of -gpu ("0,1" or "all"); [] means CPU."""
    if not flags.gpu:
        return []
    count = gpu_device_count()
    if count is None:
        raise CliError("-gpu %s was given, but %s; CuPy is not installed. Leave out -gpu to run "
                       "on the CPU." % (flags.gpu, GPU_BACKEND_HELP))
    if count == 0:
        raise CliError("-gpu %s was given, but no CUDA GPU is visible to CuPy (%s). Leave out "
                       "-gpu to run on the CPU." % (flags.gpu, GPU_BACKEND_HELP))
    if flags.gpu == "all":
        return list(range(count))
    gpus = []
    for s in flags.gpu.split(","):
        try:
            g = int(s)
        except ValueError:
            raise CliError("-gpu must be a comma-separated list of device ids or 'all' (got "
                           "'%s')" % flags.gpu) from None
        if not 0 <= g < count:
            raise CliError("-gpu %d: no such device (CuPy sees %d GPU%s: ids 0..%d)"
                           % (g, count, "" if count == 1 else "s", count - 1))
        gpus.append(g)
    return gpus


def use_gpu(device_id):
    backend.set_device(device_id)
    backend.set_mode_gpu()


def use_cpu():
    backend.set_mode_cpu()


def gpu_properties(device_id):
    """cudaDeviceProp of ``device_id`` as a dict, with byte strings decoded."""
    import cupy
    props = cupy.cuda.runtime.getDeviceProperties(device_id)
    return {k: v.decode() if isinstance(v, bytes) else v for k, v in props.items()}


def gpu_name(device_id):
    try:
        return str(gpu_properties(device_id).get("name", ""))
    except Exception:
        return "?"


def synchronize():
    """Wait for the GPU's queued work (a no-op on the CPU), so that timings cover it."""
    if backend.mode() == backend.GPU:
        backend.xp().cuda.runtime.deviceSynchronize()
