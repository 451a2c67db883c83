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

/* The label of a guest's tasks (task storage) and of the sockets they create. */
struct svirt_subject {
	struct svirt_level level;
};

/* The label of one host object, keyed by its identity (struct svirt_inode_key). */
struct svirt_object {
	struct svirt_level level;
	__u32 allow; /* SVIRT_MAY_* the object's kind permits */
	__u32 flags; /* SVIRT_OBJ_* */
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

/* 1 when a subject at s may have `want` (SVIRT_MAY_*) on object o. */
static __always_inline int svirt_may(const struct svirt_level *s,
				     const struct svirt_object *o, __u32 want)
{
	if (want & ~o->allow)
		return 0;
	return svirt_dominates(s, &o->level);
}

#endif
