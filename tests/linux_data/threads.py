import threading, queue, time
q = queue.Queue(); out = []
def worker(n):
    s = 0
    for i in range(20000): s += i * n
    q.put((n, s))
ts = [threading.Thread(target=worker, args=(i,)) for i in range(4)]
for t in ts: t.start()
for t in ts: t.join()
res = sorted(q.get() for _ in range(4))
ev = threading.Event()
threading.Timer(0.01, ev.set).start()
print(ev.wait(5), res)
