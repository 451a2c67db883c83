/* SPDX-License-Identifier: GPL-2.0 */
/*
 * The decision of svirt's BPF-LSM enforcer, shared by the LSM programs and the test
 * program that checks it against svirt's policy model (crates/bpf/tests).
 *
 * It is SELinux's rule for svirt_t under the MCS policy, in two parts:
 *   - type enforcement, as a mask: what the object's kind may be used for at all
 *     (a guest's image: read and write; read-only content: read; the VMM's libraries and
 *     emulator: read and execute);
 *   - the MCS constraint: the subject's categories must contain the object's
 *     ("h1 dom h2": s0:c1,c2 may use s0, s0:c1 and s0:c1,c2; never s0:c3).
 *
 * The layout of these structures is mirrored in crates/bpf/src/label.rs.
 */
#ifndef SVIRT_MCS_H
#define SVIRT_MCS_H

/* 1024 categories (c0..c1023), as in the MCS policy. */
#define SVIRT_CAT_WORDS 16

/* What a subject asks of an object. */
#define SVIRT_MAY_READ 1u
#define SVIRT_MAY_WRITE 2u
#define SVIRT_MAY_EXEC 4u

/* svirt_object.flags: the label also covers everything beneath this directory. */
#define SVIRT_OBJ_TREE 1u

struct svirt_level {
	__u64 cats[SVIRT_CAT_WORDS];
};

/*
 * A label's id: a summary of its categories that lets the common decisions skip the
 * 16-word dominance loop. It is a function of the category set alone, the same for a
 * subject and an object (crates/bpf/src/label.rs, Cats::id), so no table of ids has to
 * outlive svirtd beside the pinned maps:
 *   0                        no category (s0), dominated by every level;
 *   1 + a                    the one category ca;
 *   1025 + a * 1024 + b      the two categories ca, cb (a < b), a guest's usual level;
 *   SVIRT_ID_BITMAP          more categories: only the bitmaps can tell.
 * Distinct sets of at most two categories have distinct ids, so equal ids (other than
 * SVIRT_ID_BITMAP) mean equal category sets, and equal sets dominate each other.
 */
#define SVIRT_ID_S0 0u
#define SVIRT_ID_BITMAP 0xffffffu

/* The label of a guest's tasks (task storage) and of the sockets they create. */
struct svirt_subject {
	struct svirt_level level;
	__u32 id; /* of level */
	__u32 pad;
};

/* The label of one host object, keyed by its identity (struct svirt_inode_key). */
struct svirt_object {
	struct svirt_level level;
	__u32 allow; /* SVIRT_MAY_* the object's kind permits */
	__u32 flags; /* SVIRT_OBJ_* */
	__u32 id;    /* of level */
	__u32 pad;
};

/* An inode's identity: the kernel's dev_t of its superblock (MKDEV: major << 20 | minor)
 * and its inode number. */
struct svirt_inode_key {
	__u64 dev;
	__u64 ino;
};

/* 1 when s dominates o: every category of o is one of s. */
static __always_inline int svirt_dominates(const struct svirt_level *s,
					   const struct svirt_level *o)
{
	__u64 extra = 0;
#pragma unroll
	for (int i = 0; i < SVIRT_CAT_WORDS; i++)
		extra |= o->cats[i] & ~s->cats[i];
	return extra == 0;
}

/* The decision from the ids alone: 1 allowed, 0 denied, -1 when only the bitmaps can
 * tell (the object has categories the subject's id does not name as its own). */
static __always_inline int svirt_may_id(__u32 sid, __u32 oid, __u32 allow, __u32 want)
{
	if (want & ~allow)
		return 0;
	if (oid == SVIRT_ID_S0 || (oid == sid && oid != SVIRT_ID_BITMAP))
		return 1;
	return -1;
}

/* 1 when subject s dominates subject t (signals, sockets). */
static __always_inline int svirt_subject_dominates(const struct svirt_subject *s,
						   const struct svirt_subject *t)
{
	int r = svirt_may_id(s->id, t->id, 0, 0);

	if (r >= 0)
		return r;
	return svirt_dominates(&s->level, &t->level);
}

/* 1 when a subject s may have `want` (SVIRT_MAY_*) on object o. */
static __always_inline int svirt_may(const struct svirt_subject *s,
				     const struct svirt_object *o, __u32 want)
{
	int r = svirt_may_id(s->id, o->id, o->allow, want);

	if (r >= 0)
		return r;
	return svirt_dominates(&s->level, &o->level);
}

#endif
