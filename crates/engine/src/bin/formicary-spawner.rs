//! The engine's sandbox spawner as a program of its own, for embedders
//! whose binary does not call `main_if_spawner` (and for the engine's
//! tests): run as `formicary-spawner __formicary-spawner`.

fn main() {
    formicary_engine::spawner::main_if_spawner();
    eprintln!("formicary-spawner: started by formicary's engine (SpawnerProgram), not by hand");
    std::process::exit(2);
}
