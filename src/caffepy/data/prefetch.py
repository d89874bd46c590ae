"""Background prefetching of batches: Caffe's BasePrefetchingDataLayer in Python.

A ``Prefetcher`` owns ``n`` preallocated ``Batch`` objects that circulate between two queues,
as in Caffe: the thread takes a batch from the *free* queue, fills it with ``source.load(batch)``
(reading, decoding and transforming on the host) and puts it on the *full* queue; the layer's
forward takes the next full batch, copies it into its tops and gives it back to the free queue.
So reading and transforming the next batches overlap the net's compute.

The thread holds only the source and the queues, never the layer, so a layer (and the Net that
owns it) can be garbage collected while the thread runs: the layer registers
``weakref.finalize(layer, prefetcher.stop)``, which stops the thread when the layer goes away.
``stop()`` is also what the layer's ``close()`` calls, and every live prefetcher is stopped at
interpreter exit. The thread is a daemon, so an interrupted process never waits for it.

An exception raised while loading a batch is handed to the forward that would have consumed
that batch and raised there (in the main thread); the thread then ends.

With ``n == 0`` nothing runs in the background: each ``next()`` loads its batch synchronously.
"""
import atexit
import queue
import threading
import time
import weakref


class Batch:
    """One prefetched batch: ``data`` and ``label`` host arrays (filled by the source), or the
    exception that loading it raised."""
    __slots__ = ("data", "label", "error")

    def __init__(self, data=None, label=None):
        self.data = data
        self.label = label
        self.error = None


_STOP = object()            # the sentinel put on the free queue to wake a waiting thread
_LIVE = weakref.WeakSet()   # prefetchers with a running thread, stopped at exit


def _run(source, free, full, stop):
    """The prefetch thread's loop. It refers to no layer: only the source and the queues."""
    try:
        while not stop.is_set():
            batch = free.get()
            if batch is _STOP or stop.is_set():
                break
            try:
                source.load(batch)
            except BaseException as e:    # handed to the consuming forward, then stop
                batch.error = e
                full.put(batch)
                break
            full.put(batch)
    finally:
        try:
            source.close()
        except Exception:
            pass


class Prefetcher:
    """Runs ``source.load(batch)`` ahead of time in a daemon thread over ``n`` batches.

    ``source`` has ``load(batch)`` (fill ``batch.data``/``batch.label``, reallocating them if the
    shape changes) and ``close()`` (release files; called once, by the thread when it ends, or
    by ``stop()`` when there is no thread). ``batches`` are the preallocated Batch objects.
    """

    def __init__(self, source, batches, name="data"):
        self.name = name
        self._source = source
        self.n = len(batches)
        self.wait_time = 0.0          # seconds the consumer spent waiting in next()
        self.batches_served = 0
        self._error = None
        self._closed = False
        self._thread = None
        if self.n == 0:
            self._sync_batch = Batch()
            return
        self._free = queue.Queue()
        self._full = queue.Queue()
        for b in batches:
            self._free.put(b)
        self._stop = threading.Event()
        self._thread = threading.Thread(
            target=_run, args=(source, self._free, self._full, self._stop),
            name="caffepy-prefetch-%s" % name, daemon=True)
        _LIVE.add(self)
        self._thread.start()

    @property
    def thread(self):
        return self._thread

    def is_alive(self):
        return self._thread is not None and self._thread.is_alive()

    def next(self):
        """The next loaded batch (waits for it). Give it back with ``release(batch)``."""
        if self._error is not None:
            raise self._error
        if self._closed:
            raise RuntimeError("the data prefetcher '%s' was closed" % self.name)
        t0 = time.perf_counter()
        if self._thread is None:
            batch = self._sync_batch
            self._source.load(batch)
        else:
            while True:
                try:
                    batch = self._full.get(timeout=0.25)
                    break
                except queue.Empty:
                    if not self._thread.is_alive() and self._full.empty():
                        self._closed = True
                        raise RuntimeError("the data prefetch thread '%s' ended unexpectedly"
                                           % self.name) from None
        self.wait_time += time.perf_counter() - t0
        if batch.error is not None:
            self._error = batch.error
            batch.error = None
            self._thread.join(timeout=5)
            raise self._error
        self.batches_served += 1
        return batch

    def release(self, batch):
        """Give a batch back to be refilled."""
        if self._thread is not None and not self._closed:
            self._free.put(batch)

    def stop(self, timeout=10.0):
        """Stop the thread (it finishes the batch it is loading) and release the source."""
        if self._closed:
            return
        self._closed = True
        if self._thread is None:
            self._source.close()
            return
        self._stop.set()
        self._free.put(_STOP)
        if self._thread is not threading.current_thread():
            self._thread.join(timeout)
        _LIVE.discard(self)
        # Drop the queued batches (their arrays) now rather than with the prefetcher.
        for q in (self._full, self._free):
            try:
                while True:
                    q.get_nowait()
            except queue.Empty:
                pass

    close = stop


def attach(owner, prefetcher):
    """Stop ``prefetcher`` when ``owner`` (a layer) is garbage collected; returns the finalizer
    (call it to stop early: it runs once)."""
    return weakref.finalize(owner, prefetcher.stop)


@atexit.register
def _stop_all():
    for p in list(_LIVE):
        try:
            p.stop(timeout=1.0)
        except Exception:
            pass
