"""Checkpoint format: orbax-checkpoint (StandardCheckpointer) against one plain .npz written atomically, for the
default MLP's training state (784-256-256-10 parameters and two Adam moments: 3.2 MB). Six saves, three restores each.

    python benchmarks/checkpoint_format.py
"""
import time, io, os, tempfile, sys
t=time.perf_counter()
import numpy as np, jax, jax.numpy as jnp
t_jax=time.perf_counter()-t
t=time.perf_counter()
import orbax.checkpoint as ocp
t_orbax=time.perf_counter()-t
print(f"import jax {t_jax:.2f}s orbax {t_orbax:.2f}s")
rng=np.random.default_rng(0)
sizes=[784,256,256,10]
params=[{"w":jnp.asarray(rng.normal(size=(a,b)),jnp.float32),"b":jnp.zeros(b)} for a,b in zip(sizes[:-1],sizes[1:])]
state={"params":params,"mu":params,"nu":params,"count":jnp.array(3)}
d=tempfile.mkdtemp()
ck=ocp.StandardCheckpointer()
ts=[]
for i in range(6):
    t=time.perf_counter(); ck.save(os.path.join(d,f"o{i}"),state); ck.wait_until_finished(); ts.append(time.perf_counter()-t)
print("orbax save", [f"{x*1000:.0f}" for x in ts], "ms")
ts=[]
for i in range(6):
    t=time.perf_counter()
    leaves,_=jax.tree_util.tree_flatten(state)
    buf=io.BytesIO(); np.savez(buf,*[np.asarray(l) for l in leaves])
    p=os.path.join(d,f"n{i}.npz"); tmp=p+".tmp"
    with open(tmp,"wb") as f: f.write(buf.getvalue()); f.flush(); os.fsync(f.fileno())
    os.replace(tmp,p); ts.append(time.perf_counter()-t)
print("npz save", [f"{x*1000:.0f}" for x in ts], "ms")
ts=[]
for i in range(3):
    t=time.perf_counter(); r=ck.restore(os.path.join(d,f"o{i}"), state); ts.append(time.perf_counter()-t)
print("orbax restore", [f"{x*1000:.0f}" for x in ts])
ts=[]
for i in range(3):
    t=time.perf_counter(); z=np.load(os.path.join(d,f"n{i}.npz")); l=[z[k] for k in z.files]; ts.append(time.perf_counter()-t)
print("npz restore", [f"{x*1000:.0f}" for x in ts])
print(sum(os.path.getsize(os.path.join(dp,f)) for dp,_,fs in os.walk(os.path.join(d,"o0")) for f in fs), os.path.getsize(os.path.join(d,"n0.npz")))
