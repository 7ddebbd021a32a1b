//! The real wire engine distributing a file in virtual time, against the fluid bound.

use simulations::scenarios::swarm::{run, SwarmParams};

#[test]
fn a_small_swarm_finishes_within_one_and_a_half_times_the_fluid_bound() {
    let p = SwarmParams::new(10, 1);
    let r = run(&p);
    let last = r.last_completion().expect("every leecher completes");
    let ratio = last / r.t_min;
    assert!(
        ratio >= 1.0,
        "faster than the lower bound is impossible: {last} s vs {} s",
        r.t_min
    );
    assert!(
        ratio <= 1.5,
        "last completion {last:.1} s is {ratio:.2} x T_min {:.1} s",
        r.t_min
    );
    // Peers uploaded to each other: the seeder sent far less than N copies.
    assert!(
        r.uploaded_by_seed < (p.leechers as u64 * p.file_bytes) / 2,
        "{r:?}"
    );
}
