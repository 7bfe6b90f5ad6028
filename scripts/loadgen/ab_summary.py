import sys,glob,re,statistics as st
# Summarises the runs of ab.sh: per cell, the per-pair B/A ratios and medians.
d=sys.argv[1]
rows={}
for f in sorted(glob.glob(d+'/*.out')):
    v,i=f.split('/')[-1].split('.')[:2]
    txt=open(f).read()
    raw=re.search(r'raw ceiling.*?: (\d+) ops/s',txt)
    for m in re.finditer(r'^(\S+)\s+(\d+)\s+(\d+)\s+([\d.]+)\s+([\d.]+)\s+([\d.]+)\s+([\d.]+)\s+([\d.]+)\s+([\d.]+)\s+([\d.]+)\s+(\d+)$',txt,re.M):
        op,c=m.group(1),m.group(2)
        rows.setdefault((op,c),{}).setdefault(i,{})[v]=dict(rps=float(m.group(3)),p99=float(m.group(5)),cpu=float(m.group(7)),allocs=float(m.group(8)),vsraw=float(m.group(10)),err=int(m.group(11)))
print(f"{'op':16}{'conc':>5} {'A req/s':>8} {'B req/s':>8} {'B/A rps (per pair)':>30} {'A cpu':>6} {'B cpu':>6} {'B/A cpu':>7} {'A allocs':>8} {'B allocs':>8} {'A p99':>6} {'B p99':>6} {'A vsraw':>7} {'B vsraw':>7} err")
for (op,c),pairs in rows.items():
    ps=[p for p in pairs.values() if 'A' in p and 'B' in p]
    if not ps: continue
    r=[p['B']['rps']/p['A']['rps'] for p in ps]
    cr=[p['B']['cpu']/p['A']['cpu'] for p in ps]
    med=lambda k,v: st.median(p[v][k] for p in ps)
    print(f"{op:16}{c:>5} {med('rps','A'):8.0f} {med('rps','B'):8.0f} {st.median(r):6.2f} ({' '.join('%.2f'%x for x in r)}) {med('cpu','A'):6.1f} {med('cpu','B'):6.1f} {st.median(cr):7.2f} {med('allocs','A'):8.1f} {med('allocs','B'):8.1f} {med('p99','A'):6.1f} {med('p99','B'):6.1f} {med('vsraw','A'):7.2f} {med('vsraw','B'):7.2f} {sum(p['A']['err']+p['B']['err'] for p in ps)}")
# With a mock-encrypt cell (ab.sh ... -mock bin/local-kms), the same
# software-only KMS runs in both runs of a pair: its own B/A ratio is the
# VM's luck between the two runs. Each kmsd cell's B/A is divided by it,
# pair by pair, and kmsd's rate over the mock's within each run (both in
# the same interleaved rounds) is shown too; both are steadier than the
# raw ratios on a shared VM (BENCHMARKS.md, "Call by call").
for (op,c),pairs in rows.items():
    if op=='mock-encrypt' or ('mock-encrypt',c) not in rows: continue
    mock=rows[('mock-encrypt',c)]
    ps=[(p,mock[i]) for i,p in pairs.items() if 'A' in p and 'B' in p and i in mock and 'A' in mock[i] and 'B' in mock[i]]
    if not ps: continue
    n=[(p['B']['rps']/p['A']['rps'])/(m['B']['rps']/m['A']['rps']) for p,m in ps]
    wa=[p['A']['rps']/m['A']['rps'] for p,m in ps]
    wb=[p['B']['rps']/m['B']['rps'] for p,m in ps]
    print(f"{op}@{c}: B/A normalised by the mock {st.median(n):.2f} ({' '.join('%.2f'%x for x in n)}); over the mock within a run: A {st.median(wa):.2f}, B {st.median(wb):.2f}")
