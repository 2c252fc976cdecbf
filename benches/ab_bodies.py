#!/usr/bin/env python3
"""A/B of two llmedge binaries on large chat bodies, interleaved request by request.

Usage: python3 benches/ab_bodies.py BEFORE_BIN AFTER_BIN [BODY_BYTES] [ROUNDS]
Starts `AFTER_BIN mock` as the upstream and one gateway per binary with the same config
(auth, limits, pricing, state file), then prints each gateway's median latency and CPU per
request (from /proc). Loopback only; bounded by ROUNDS.
"""
import subprocess, time, http.client, json, socket, statistics, os, sys, tempfile
def port():
    s=socket.socket(); s.bind(('127.0.0.1',0)); p=s.getsockname()[1]; s.close(); return p
def wait(p, path):
    for _ in range(200):
        try:
            c=http.client.HTTPConnection('127.0.0.1',p,timeout=1); c.request('GET',path); r=c.getresponse(); r.read()
            if r.status==200: return
        except Exception: pass
        time.sleep(0.05)
    raise SystemExit(f'no {p}')
BINS={'before':sys.argv[1],'after':sys.argv[2]}
mp=port()
procs=[subprocess.Popen([BINS['after'],'mock','--listen',f'127.0.0.1:{mp}','--threads','2','--tokens','16','--delay-ms','0','--models','llama3'],stdout=subprocess.DEVNULL,stderr=subprocess.DEVNULL)]
wait(mp,'/health')
d=tempfile.mkdtemp(); gws={}
for name in ['before','after']:
    p,a=port(),port()
    conf=f'''server:\n  listen: "127.0.0.1:{p}"\n  admin_listen: "127.0.0.1:{a}"\n  threads: 2\nkeys:\n  - key: "sk-ab"\n    tenant: bench\n    limits: {{rpm: 100000000, tpm: 100000000000}}\npricing:\n  "mock/*": {{input: 0.5, output: 1.5}}\nstate:\n  path: "{d}/{name}.json"\npools:\n  mock:\n    backends: ["http://127.0.0.1:{mp}"]\nroutes:\n  - prefix: "mock/"\n    pool: mock\n    strip_prefix: true\n'''
    f=f'{d}/{name}.yaml'; open(f,'w').write(conf)
    procs.append(subprocess.Popen([BINS[name],'--config',f],stdout=subprocess.DEVNULL,stderr=subprocess.DEVNULL,cwd=d))
    wait(p,'/healthz'); gws[name]=(p,procs[-1].pid)
size=int(sys.argv[3]) if len(sys.argv)>3 else 4*1024*1024
body=json.dumps({"model":"mock/llama3","messages":[{"role":"user","content":"x"*size}]}).encode()
def cpu(pid):
    f=open(f'/proc/{pid}/stat').read().split(')')[1].split(); return (int(f[11])+int(f[12]))/os.sysconf('SC_CLK_TCK')
lat={'before':[],'after':[]}; c0={k:cpu(v[1]) for k,v in gws.items()}
for i in range(int(sys.argv[4]) if len(sys.argv)>4 else 40):
    for name in (['before','after'] if i%2==0 else ['after','before']):
        p=gws[name][0]
        c=http.client.HTTPConnection('127.0.0.1',p,timeout=10)
        t=time.perf_counter(); c.request('POST','/v1/chat/completions',body,{'Authorization':'Bearer sk-ab','Content-Type':'application/json'}); r=c.getresponse(); r.read(); dt=(time.perf_counter()-t)*1000
        assert r.status==200, r.status
        lat[name].append(dt); c.close()
for k in lat:
    n=len(lat[k]); print(k, 'p50 %.2f ms'%statistics.median(lat[k]), 'cpu/req %.2f ms'%((cpu(gws[k][1])-c0[k])/n*1000))
for p in procs: p.kill()
