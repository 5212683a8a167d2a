"""Session 46: the residual left by a per-row-block order of K that moves B's rows in pairs (2j, 2j + 1) (2-row TMA boxes),
against column order; uniform 256x2048, 64-row blocks; the count is of rows with >= 3 nonzeros in a group (approx.).
    python3 bench/drafts/perm_pairs_eval.py"""
# residual when the per-block order moves original column pairs (2j, 2j+1) together (2-row TMA boxes)
import numpy as np, sys, time
sys.path.insert(0,'.')
from sparse_autotune.core.problem import random_matrix
def popc(x): return np.bitwise_count(x).astype(np.int64)
def run(M,K,d,R,S=1024):
    a=random_matrix(M,K,d,"uniform",0); nb=M//R; tot=0; nat=0
    for b in range(nb):
        blk=a[b*R:(b+1)*R].toarray()!=0
        # natural
        g=blk.reshape(R,K//4,4).sum(2); nat+=np.maximum(g-2,0).sum()
        # pair masks: m1 rows with >=1 in pair, m2 rows with 2 in pair
        w=(R+63)//64
        def mask(cols):
            v=np.zeros(w,np.uint64)
            for r in np.nonzero(cols)[0]: v[r//64]|=np.uint64(1)<<np.uint64(r%64)
            return v
        P=K//2
        p1=np.array([mask(blk[:,2*j]|blk[:,2*j+1]) for j in range(P)])
        p2=np.array([mask(blk[:,2*j]&blk[:,2*j+1]) for j in range(P)])
        order=np.argsort(-(popc(p1).sum(1)+popc(p2).sum(1)),kind='stable')
        G=P//2; s=min(S,G)
        o1=np.zeros((s,w),np.uint64); o2=o1.copy(); fill=np.zeros(s,int); nxt=s
        for j in order:
            # overflow rows: (group>=2 & pair>=1) | (group>=1 & pair==2) counting extra: approx rows count
            c=popc(o2 & p1[j]).sum(1)+popc(o1 & p2[j]).sum(1)
            c=np.where(fill<2,c*1000+popc(o1&p1[j]).sum(1),1<<50)
            gi=int(np.argmin(c)); 
            # exact new overflow count: rows count in group after adding
            tot+=int(c[gi]//1000)
            o2[gi]|= (o1[gi]&p1[j]) | p2[j]; o1[gi]|=p1[j]; fill[gi]+=1
            if fill[gi]==2 and nxt<G: o1[gi]=0;o2[gi]=0;fill[gi]=0;nxt+=1
    print(f"{M}x{K} d{d} R{R}: natural {nat/a.nnz:.4f} pairs-greedy ~{tot/a.nnz:.4f} (rows with >=3; approx)")
for d in (0.1,0.2,0.3): run(256,2048,d,64)
