/*
 * The race of Examples/races/three-vcpus-vs-revoke.yaml (variant reviewed), written in Promela
 * with the same atomic regions as the model's paths, so that SPIN's states per second can be
 * set beside pmmio explore's (Scripts/compare-spin). Three vCPUs access pages of one dma-buf
 * slot mapped with one 2 MiB leaf (vCPU 0 and 1 read page 0, vCPU 2 writes page 1: one leaf
 * serves all three), while memory decode is turned off: VFIO revokes the buffer, KVM's
 * move_notify zaps the slot inside an invalidation, the TSM unbind stops the interface, the
 * importers are told again, then the command register is written.
 *
 * Each `atomic { }` is one region of the model: a lock taken or dropped, the unlocked PFN
 * lookup, the install under mmu_lock. The asserts are the invariants the race is about.
 */

bool revoked = false;        /* the buffer: priv->revoked */
byte resv = 0;               /* dma_resv lock holder: 0 free, else the thread */
byte mmuWriter = 0;          /* kvm->mmu_lock: the writer, 0 none */
byte mmuReaders = 0;         /* and the number of readers */
byte seq = 0;                /* kvm->mmu_invalidate_seq (relative) */
byte inProgress = 0;         /* kvm->mmu_invalidate_in_progress */
bool leaf = false;           /* the 2 MiB SPTE of the slot */
bool notifyReturned = true;  /* the importer's move_notify has returned */
bool tdiStopped = false;        /* the TDI is CONFIG_UNLOCKED */
bool decode = true;          /* command register memory space enable */
byte memoryLock = 0;         /* vdev->memory_lock writer */
byte done = 0;               /* threads finished */

/* A vCPU access: in guest mode it completes if the leaf is present; else the fault runs. */
proctype vcpu(byte id) {
  byte mySeq;
  bool gotPfn;
guest:
  atomic {
    if
    :: leaf -> assert(!(revoked && notifyReturned)); goto finished
    :: else -> skip
    fi
  }
  /* fault: srcu_read_lock, read mmu_invalidate_seq, find the slot */
  atomic { mySeq = seq }
  /* dma_buf_get_pfn_unlocked: the resv only around the exporter's get_pfn */
  atomic {
    resv == 0 ->
    if
    :: revoked -> gotPfn = false
    :: else -> gotPfn = true
    fi
  }
  if
  :: !gotPfn -> goto finished        /* -EIO to the guest */
  :: else -> skip
  fi
  /* mmu_lock read, sequence check, install */
  atomic {
    mmuWriter == 0 ->
    if
    :: inProgress > 0 || seq != mySeq -> goto guest   /* retry: back to the guest */
    :: else ->
      /* NoStalePFNAfterInvalidation: a PFN withdrawn by an invalidation that has ended */
      assert(!(revoked && notifyReturned));
      leaf = true
    fi
  }
  goto guest;
finished:
  atomic { done++ }
}

/* One move_notify: mmu_lock write, invalidate, zap the slot, unlock (one region). */
inline notifyImporter() {
  atomic {
    mmuWriter == 0 && mmuReaders == 0 ->
    inProgress++; seq++;
    leaf = false;
    inProgress--;
    notifyReturned = true
  }
}

proctype revoke() {
  atomic { memoryLock == 0 -> memoryLock = 4 }                           /* down_write(memory_lock) */
  atomic { resv == 0 -> resv = 4; revoked = true; notifyReturned = false } /* resv, flip, move_notify */
  notifyImporter();
  atomic { resv = 0 }                                                      /* dma_resv_unlock */
  atomic { tdiStopped = true }                                                /* TSM unbind: STOP_INTERFACE */
  atomic { resv == 0 -> resv = 4; notifyReturned = false }                 /* renotify */
  notifyImporter();
  atomic { resv = 0 }
  atomic { decode = false }                                                /* the config write */
  atomic { memoryLock = 0; done++ }                                        /* up_write(memory_lock) */
}

init {
  atomic {
    run vcpu(1); run vcpu(2); run vcpu(3); run revoke()
  }
  done == 4;
  assert(!leaf)   /* RevokedImpliesNoSPTE, at the end */
}
